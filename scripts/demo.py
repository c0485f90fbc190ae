"""`make demo`: run the furthest part of Umbra's protection pipeline that works, on this machine.

1. start a real S3 server (Ceph RADOS Gateway, deploy/s3/rgw.sh), the five services (each its own process) and
   the inference server (a real Triton, serving what is published in object storage);
2. check each service's health and call it with its credential;
3. create a tenant, generate labelled synthetic faces, upload them as a dataset (validated, sharded, sent to
   S3 through presigned URLs, committed), and export the committed version back to check it byte for byte;
4. train a DP-SGD gender classifier on it through the training service (epsilon in the operation's progress),
   starting from weights pretrained on other, public synthetic faces; evaluate it on the test split, publish
   it to Triton through the coordinator's ModelService (the tenant's API key) and classify exported images
   with `umbra models predict` (through the coordinator's ModelService.Predict, with the tenant's key: Triton
   answers no one else);
5. release an AugMDP version (two copies) of the training split through the distortion service, with the
   classifier of step 4 as the feature extractor: the coordinator reserves the version, the distortion service
   writes it, the coordinator commits it; export it and draw original / start image / released image;
6. train a DP diffusion generator through the anonymizer (DP-SGD on the tenant's training split, starting from
   the public generator Umbra ships, pretrained once on public faces), preview eight test faces at three
   intensities with the ε of each mechanism, and anonymize the whole dataset (gender protected, skin tone kept)
   into a version the coordinator reserves and commits; draw originals beside the previews;
7. the main job through the coordinator's public API: a protection job of the dataset and the gender
   classifier of step 4 reuses the generator of step 6 (trained on this dataset), shows previews of eight test
   faces, and a scripted reviewer prints what it sees and answers more or less privacy until the intensity
   suits it, and accepts; the coordinator anonymizes the dataset at that intensity and commits it, updates the
   classifier to the released images by feature unlearning (unlearning service; second order, or first order
   when the service's safety check refuses the second-order step), verified against retraining from scratch
   (training service), and writes the report (out/demo/report/report.html and .pdf), which opens with its verdict
   on the job's policy (docs/examples/policy.yaml). The updated classifier is then
   published to Triton through the ModelService and queried with `umbra models predict`. Write what was seen
   to out/demo/demo.json and stop everything it started (unless --keep), also when a step fails or the demo is
   interrupted. The coordinator serves the review page (REVIEW_PORT, --review-port) all along; with --keep it stays
   up, and a person signs in with the tenant's key (out/demo/tenant-api-key) to see the job, its rounds and report.

With `--replicas 2` the coordinator runs as two replicas on PostgreSQL (deploy/postgres/pg.sh, started here unless
it is running, stopped afterwards unless --keep; a fresh database `umbra_demo`; each replica its own data folder;
job leases of LEASE_SECONDS), and the other services reach the ledger at either replica. In step 7 the replica
driving the job (the one whose pid is in the job's lease, read from the database) is SIGKILLed while the dataset is
anonymized; the demo shows the other replica taking the job over and the job finishing there. Without the flag (as
`make demo` runs it): one coordinator on SQLite.

A refusal by a service (a gRPC error or a failed operation) is reported in plain words, never as a traceback;
the steps that need the refused step's result are skipped, and the demo exits 1.

    python scripts/demo.py [--keep] [--faces N] [--epsilon E] [--inference-port P] [--review-port P] [--replicas 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

from umbra.classifiers import recipes
from umbra.cli import local
from umbra.client import OperationFailed, UmbraRpcError, health_of, layout
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.errors import grpc_code_name
from umbra.client.operations import OperationsClient
from umbra.client.policy import load_policy
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import model_service_pb2 as cms
from umbra.coordinator.v1 import model_service_pb2_grpc
from umbra.coordinator.v1 import (dataset_service_pb2_grpc, job_service_pb2, job_service_pb2_grpc,
                                  ledger_service_pb2, ledger_service_pb2_grpc, tenant_service_pb2,
                                  tenant_service_pb2_grpc)
from umbra.dataset import synthetic
from umbra.distortion.v1 import distortion_service_pb2 as dds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "demo"
RGW = ROOT / "deploy" / "s3" / "rgw.sh"
INFERENCE_PORT = 8001  # Triton's usual gRPC port (--inference-port)
REVIEW_PORT = 8090  # the coordinator's review page (--review-port)
POLICY = ROOT / "docs" / "examples" / "policy.yaml"  # the main job's release policy
PUBLIC_FACES = 1500  # public synthetic faces for pretraining
DEMO_EPOCHS = 8
PUBLIC_GENERATOR = "public-faces-64"  # the public generator Umbra ships (docs/pretraining.md): no run trains it
GENERATOR_DP_EPOCHS = 30  # DP-SGD of its denoiser on the tenant's faces (the public autoencoder is kept)
# The demo tenant's privacy budget (set at CreateTenant), also given as the budget of each anonymizer request.
# Large, because a preview at a low intensity releases a barely noised image: its image ε is in the thousands
# (see the README's intensity table); every charge is in the ledger.
DEMO_BUDGET = 20_000.0
DEMO_DELTA = 1e-3
PG = ROOT / "deploy" / "postgres" / "pg.sh"
DEMO_DATABASE = "umbra_demo"  # on pg.sh's server, made afresh by `--replicas 2`
LEASE_SECONDS = 6.0  # UMBRA_JOB_LEASE_SECONDS of the replicas (the default is 15): the takeover comes sooner


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Steps:
    """Runs the demo's steps. A refusal (a gRPC error, a failed operation) is reported in plain words and the step
    marked failed; a step whose inputs come from a failed step is skipped. Anything else is a bug and propagates."""

    def __init__(self, report: dict):
        self.report = report
        self.failed: list[str] = []

    def run(self, key: str, title: str, work: Callable[[], object], needs: tuple[str, ...] = ()) -> None:
        step(title)
        missing = [n for n in needs if n not in self.report]
        if missing:
            print(f"   skipped: it needs what {', '.join(missing)} would have given")
            self.report.setdefault("skipped", []).append(key)
            return
        began = time.monotonic()
        try:
            self.report[key] = work()
        except (grpc.RpcError, UmbraRpcError, OperationFailed, subprocess.CalledProcessError) as exc:
            words = refusal(exc)
            print(f"   refused: {words}\n   this step failed; the steps that need it are skipped", flush=True)
            self.report.setdefault("failed", {})[key] = words
            self.failed.append(f"{title.split('.', 1)[0]} ({key})")
        finally:
            seconds = time.monotonic() - began
            self.report.setdefault("step_seconds", {})[key] = round(seconds, 1)
            print(f"   ({seconds:.0f} s)", flush=True)


def refusal(exc: BaseException) -> str:
    """A refusal in plain words: the status, what the service said, and the field or reason it named."""
    if isinstance(exc, grpc.RpcError):
        exc = UmbraRpcError.from_rpc_error(exc)
    if isinstance(exc, UmbraRpcError):
        extra = [f"field {exc.field}" if exc.field else "", f"reason {exc.reason}" if exc.reason else ""]
        return f"{exc.code.name}: {exc.message}" + "".join(f"; {e}" for e in extra if e)
    if isinstance(exc, OperationFailed):
        return f"{exc.name} ended with {grpc_code_name(exc.code)}: {exc.message}"
    if isinstance(exc, subprocess.CalledProcessError):
        said = (exc.stderr or "").strip().splitlines()[-3:]
        return f"`{' '.join(map(str, exc.cmd[:5]))} ...` exited {exc.returncode}" + "".join(f"\n     {x}" for x in said)
    return str(exc)


def s3_running() -> bool:
    return subprocess.run(["bash", str(RGW), "status"], capture_output=True).returncode == 0


def start_s3() -> dict[str, str]:
    subprocess.run(["bash", str(RGW), "start"], check=True)
    lines = subprocess.run(["bash", str(RGW), "env"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)


def stop_process_group(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Stops a process started in its own session, then anything its group left behind (Triton's server)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Replicas:
    """`--replicas 2`: the coordinator's second replica (the first is `umbra up`'s), the PostgreSQL database they
    share, and who holds a job's lease."""

    def __init__(self, home: Path, database: str, port: int):
        self.home, self.database, self.port = home, database, port
        self.second: subprocess.Popen | None = None
        self._engine = None

    @property
    def targets(self) -> list[str]:
        return [layout.endpoint("coordinator").target, f"127.0.0.1:{self.port}"]

    @property
    def target(self) -> str:
        """Both replicas as one gRPC target (as a Kubernetes Service spreads them): pick_first, so calls go to the
        first while it lives and to the other once it is gone."""
        return "ipv4:" + ",".join(self.targets)

    def pids(self) -> list[int | None]:
        """The replicas' pids: the first's from `umbra up`'s pid file, the second's from here; None once dead."""
        try:
            first = json.loads((self.home / "run" / "coordinator.pid").read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            first = None
        if first is not None and not Path(f"/proc/{first}").exists():
            first = None
        second = self.second.pid if self.second is not None and self.second.poll() is None else None
        return [first, second]

    def start_second(self) -> None:
        env = dict(local.service_env(self.home), UMBRA_COORDINATOR_PORT=str(self.port), UMBRA_REVIEW_PORT="0",
                   UMBRA_COORDINATOR_DATA_DIR=str(self.home / "coordinator-replica-1"))
        with open(self.home / "logs" / "coordinator-replica-1.log", "ab") as log:
            self.second = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", "coordinator"], env=env,
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        deadline = time.monotonic() + 120
        while (state := health_of(self.targets[1], timeout=1.0)) != "SERVING":
            if self.second.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second coordinator replica did not start ({state}); see "
                                   f"{self.home / 'logs' / 'coordinator-replica-1.log'}")
            time.sleep(0.2)
        print(f"   coordinator  {self.targets[1]:21} SERVING (the second replica, pid {self.second.pid}; both on "
              f"PostgreSQL, database {DEMO_DATABASE}, job leases of {LEASE_SECONDS:g} s)")

    def stop_second(self) -> None:
        if self.second is not None:
            stop_process_group(self.second, timeout=45)
        if self._engine is not None:
            self._engine.dispose()

    def lease(self, tenant: str, job: str) -> tuple[str, str]:
        """(lease holder `host:pid:…`, the job's operation) as the database says."""
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.database)
        with self._engine.connect() as connection:
            row = connection.execute(sqlalchemy.text("SELECT lease_holder, operation FROM jobs WHERE tenant = :t "
                                                     "AND id = :j"), {"t": tenant, "j": job}).one()
        return row[0], row[1]

    def driver(self, tenant: str, job: str) -> int | None:
        """Which replica (0 or 1) holds the job's lease; None when neither live one does."""
        holder = self.lease(tenant, job)[0]
        found = [i for i, pid in enumerate(self.pids()) if pid is not None and f":{pid}:" in holder]
        return found[0] if found else None


def start_postgres(stops: list) -> str:
    """pg.sh's server (started unless it runs; stopped at the end if started here) and a fresh database on it."""
    if subprocess.run(["bash", str(PG), "status"], capture_output=True).returncode == 0:
        print("   PostgreSQL (deploy/postgres/pg.sh) is already running: using it, and leaving it running")
    else:
        stops.append(("PostgreSQL", lambda: subprocess.run(["bash", str(PG), "stop"], check=False)))
        subprocess.run(["bash", str(PG), "start"], check=True)
    lines = subprocess.run(["bash", str(PG), "env"], capture_output=True, text=True, check=True).stdout
    url = dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)["UMBRA_DATABASE_URL"]
    import psycopg
    from psycopg import sql

    server = url.rsplit("/", 1)[0]
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://", 1) + "/postgres",
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
    print(f"   PostgreSQL at {server.rsplit('@', 1)[1]}: database {DEMO_DATABASE}, made afresh")
    return f"{server}/{DEMO_DATABASE}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _interrupted(signum, frame) -> None:
    raise SystemExit(128 + signum)  # SIGTERM (CI cancelling) unwinds like Ctrl-C: everything started is stopped


def start_inference_server(home: Path, port: int) -> subprocess.Popen:
    """`python -m umbra.inference.triton --store`: Triton serving what is published in the object store, locked
    with the services' token (UMBRA_SERVICE_TOKEN): it answers only the coordinator, whose ModelService.Predict
    checks the tenant's key first."""
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with open(home / "logs" / "inference.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "umbra.inference.triton", "--store", "--grpc-port", str(port),
                                 "--workspace", str(home / "triton")], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=local.service_env(home))


def predict_command(images: list[Path], publication: str, classes: str, target: str, key: str
                    ) -> tuple[list[str], dict[str, str]]:
    """`umbra models predict` through the coordinator with the tenant's key (the command and its environment)."""
    return ([sys.executable, "-m", "umbra.cli.main", "models", "predict", *map(str, images), "--model", publication,
             "--classes", classes, "--json"], dict(os.environ, UMBRA_ENDPOINT=target, UMBRA_API_KEY=key))


def train_and_serve(home: Path, tenant: str, dataset_version: str, images: Path, epsilon: float,
                    inference_url: str) -> dict:
    """Step 4: training and evaluation through the training service (internal: the demo presents the service
    credential for the tenant, as the coordinator will once its job loop drives training), then publishing through
    the coordinator's ModelService with the tenant's API key."""
    service_token = (home / "secrets" / "service-token").read_text().strip()
    channel = open_channel(layout.endpoint("training").target, service_token, tenant=tenant)
    stub, operations = training_service_pb2_grpc.TrainingServiceStub(channel), OperationsClient(channel)
    dataset, number = dataset_version.removeprefix("datasets/").split("/versions/")

    def train(model: str, data: str, version: int, dp: bool, start: refs_pb2.ModelRef | None) -> ts.ModelVersion:
        # Pretraining at the non-private recipe's learning rate; DP fine-tuning of the pretrained net at half that.
        request = ts.TrainRequest(
            model=model, dataset=refs_pb2.DatasetRef(dataset=f"datasets/{data}", version=version), task="gender",
            architecture=ts.ARCHITECTURE_GROUPNORM_CNN, seed=0, hyperparameters=ts.Hyperparameters(
                epochs=DEMO_EPOCHS, batch_size=64, physical_batch_size=64,
                learning_rate=recipes.NONPRIVATE.hyper.learning_rate / (2 if dp else 1), image_size=32, width=16))
        if dp:
            request.differential_privacy.CopyFrom(ts.DifferentialPrivacy(
                target_epsilon=epsilon, target_delta=1e-4, max_grad_norm=1.0))
        if start is not None:
            request.initialize_from.CopyFrom(start)
        name = stub.Train(request, timeout=60).operation.name
        print(f"   {name}: training {model} on datasets/{data}", flush=True)
        return operations.result(name, ts.ModelVersion, progress=True, poll_seconds=1)

    # Public pretraining: other synthetic faces, uploaded as their own dataset (public data costs no epsilon).
    public = OUT / "public-faces"
    shutil.rmtree(public, ignore_errors=True)
    synthetic.write_folder(public, PUBLIC_FACES, size=64, seed=1)
    coordinator_key = (OUT / "tenant-api-key").read_text().strip()
    public_version = DatasetsClient(open_channel(layout.endpoint("coordinator").target, coordinator_key)).upload(
        public, "public-faces", progress=False)
    start = train("models/public-gender", "public-faces", int(public_version.name.rsplit("/", 1)[1]), False, None)
    trained = train("models/gender", dataset, int(number), True, refs_pb2.ModelRef(
        model="models/public-gender", version=int(start.name.rsplit("/", 1)[1])))
    cost = trained.training_record.privacy_cost
    print(f"   {trained.name}: epsilon {cost.epsilon:.3f} at delta {cost.delta:g} ({cost.description}), started from "
          f"{start.name}")
    evaluation = operations.result(stub.Evaluate(ts.EvaluateRequest(
        model=refs_pb2.ModelRef(model="models/gender", version=int(trained.name.rsplit("/", 1)[1])),
        dataset=refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=int(number), split="test")),
        timeout=30).operation.name, ts.Evaluation, poll_seconds=1)
    print(f"   test split: accuracy {evaluation.accuracy:.3f}, balanced accuracy {evaluation.balanced_accuracy:.3f} "
          f"on {evaluation.sample_count} images")
    # Publishing is public: the tenant asks the coordinator's ModelService, with its own API key.
    coordinator = open_channel(layout.endpoint("coordinator").target, coordinator_key)
    publishing = model_service_pb2_grpc.ModelServiceStub(coordinator).PublishModel(cms.PublishModelRequest(
        publication_id="gender", request_id=secrets.token_hex(16),
        model=refs_pb2.ModelRef(model="models/gender", version=int(trained.name.rsplit("/", 1)[1]))), timeout=60)
    exported = OperationsClient(coordinator).result(publishing.operation.name, cms.Publication, timeout=180,
                                                    poll_seconds=1)
    print(f"   {exported.name} (the coordinator's ModelService): served as {exported.served_model_name} on the "
          f"inference server at {exported.endpoint}")
    sample = sorted((images / "images").iterdir())[:8]
    classes = ",".join(trained.training_record.classes)
    command, env = predict_command(sample, exported.name, classes, layout.endpoint("coordinator").target,
                                   coordinator_key)
    predicted = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    (OUT / "predictions.json").write_text(predicted)
    rows = json.loads(predicted)
    for row in rows[:4]:
        print(f"   umbra models predict {Path(row['image']).name}: gender {row['class']} ({row['probability']:.2f})")
    return {"model_version": trained.name, "epsilon": cost.epsilon, "delta": cost.delta,
            "initialized_from": start.name, "test_accuracy": evaluation.accuracy,
            "test_balanced_accuracy": evaluation.balanced_accuracy, "served_model_name": exported.served_model_name,
            "endpoint": exported.endpoint, "predicted_images": len(rows), "classes": classes,
            "predictions": str(OUT / "predictions.json")}


def release_augmdp(home: Path, tenant: str, dataset_version: str, extractor: str, exported: Path) -> dict:
    """Step 5: AugMDP of the training split into a version the coordinator reserves and commits."""
    coordinator = open_channel(layout.endpoint("coordinator").target, (OUT / "tenant-api-key").read_text().strip())
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator)
    dataset, number = dataset_version.removeprefix("datasets/").split("/versions/")
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent=f"datasets/{dataset}",
                                                                             shard_count=1), timeout=30)
    output = int(reserved.dataset_version.name.rsplit("/", 1)[1])
    service_token = (home / "secrets" / "service-token").read_text().strip()
    channel = open_channel(layout.endpoint("distortion").target, service_token, tenant=tenant)
    model, version = extractor.removeprefix("models/").split("/versions/")
    request = dds.DistortDatasetRequest(
        dataset=refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=int(number), split="train"),
        label_column="gender", feature_extractor=refs_pb2.ModelRef(model=f"models/{model}", version=int(version)),
        copies=2, steps=35, step_size=0.06, momentum=0.7, seed=0, output_dataset=f"datasets/{dataset}",
        output_version=output)
    began = time.monotonic()
    name = distortion_service_pb2_grpc.DistortionServiceStub(channel).DistortDataset(request, timeout=60).operation.name
    print(f"   {name}: AugMDP (2 copies, 35 steps, momentum 0.7) of the train split into version {output}", flush=True)
    result = OperationsClient(channel).result(name, dds.DistortionResult, progress=True, poll_seconds=1)
    seconds = time.monotonic() - began
    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(name=reserved.dataset_version.name),
                                           timeout=30)
    committed = OperationsClient(coordinator).result(commit.operation.name, cds.DatasetVersion, poll_seconds=0.5)
    print(f"   {committed.name}: {committed.sample_count} released images at {committed.image_size} px, committed by "
          f"the coordinator ({seconds:.0f} s; mean feature loss {result.feature_loss:.4f})")
    released = OUT / "faces-augmdp"
    shutil.rmtree(released, ignore_errors=True)
    DatasetsClient(coordinator).export(committed.name, released)
    record_file = OUT / "augmdp-record.json"
    record = _private_record(result.record)
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    record_file.chmod(0o600)
    before, after = _labels(exported), _labels(released)
    kept = bool(after) and all(before[key.rsplit("-c", 1)[0]] == label for key, label in after.items())
    other = all(row["start_class"] != before[row["source"]] for row in record["samples"])
    grid = _mdp_grid(exported, released, record, OUT / "augmdp-grid.png")
    print(f"   exported to {released}; every image keeps its original gender label: {kept}; start images are never "
          f"of the same class: {other}")
    print(f"   original / start image / released: {grid}; the private start-image record: {record_file}")
    return {"version": committed.name, "images": committed.sample_count, "image_size": committed.image_size,
            "seconds": round(seconds, 1), "feature_loss": result.feature_loss, "labels_kept": kept,
            "starts_of_other_classes": other,
            "export_folder": str(released), "grid": str(grid), "record": str(record_file)}


def anonymize_faces(home: Path, tenant: str, dataset_version: str) -> dict:
    """Step 6: a DP generator (DP-SGD on the tenant's training split, from the shipped public generator),
    previews of eight test faces at three intensities, and the whole dataset anonymized at
    the default intensity into a version the coordinator reserves and commits."""
    from umbra.anonymization.intensity import DEFAULT_INTENSITY
    from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
    from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc

    service_token = (home / "secrets" / "service-token").read_text().strip()
    channel = open_channel(layout.endpoint("anonymizer").target, service_token, tenant=tenant)
    stub, operations = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel), OperationsClient(channel)
    dataset, number = dataset_version.removeprefix("datasets/").split("/versions/")
    source = refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=int(number))

    def train(request: an.TrainGeneratorRequest) -> an.GeneratorResult:
        name = stub.TrainGenerator(request, timeout=60).operation.name
        print(f"   {name}: training {request.model} on {request.dataset.dataset}", flush=True)
        return operations.result(name, an.GeneratorResult, progress=True, poll_seconds=1)

    generator = train(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset=source.dataset, version=source.version, split="train"),
        condition_attributes=["gender", "skin_tone"], model="models/generator", epochs=GENERATOR_DP_EPOCHS,
        batch_size=64, learning_rate=2e-3, seed=0, initialize_from_public=PUBLIC_GENERATOR,
        privacy=an.GeneratorPrivacy(target_epsilon=10.0, target_delta=1e-4, max_grad_norm=1.0, noise_multiplicity=2),
        budget=privacy_pb2.PrivacyBudget(epsilon=DEMO_BUDGET, delta=DEMO_DELTA)))
    cost = generator.privacy_cost
    print(f"   generator {generator.generator.model} v{generator.generator.version}: epsilon_g {cost.epsilon:.3f} at "
          f"delta {cost.delta:g}, from the shipped {PUBLIC_GENERATOR}")

    def settings(intensity: float) -> an.AnonymizationSettings:
        return an.AnonymizationSettings(generator=generator.generator, protected_attributes=["gender"],
                                        kept_attributes=["skin_tone"], intensity=intensity, seed=0,
                                        budget=privacy_pb2.PrivacyBudget(epsilon=DEMO_BUDGET, delta=DEMO_DELTA))

    exported = OUT / "faces-export"
    test_keys = _test_keys(tenant, dataset, int(number))[:8]
    previews, costs = {}, {}
    for intensity in (0.25, DEFAULT_INTENSITY, 1.0):
        response = stub.Anonymize(an.AnonymizeRequest(settings=settings(intensity), dataset=source,
                                                      sample_keys=test_keys), timeout=300)
        previews[intensity] = response.images
        costs[intensity] = response.privacy_cost.epsilon
        print(f"   preview at intensity {intensity:g}: epsilon per image {response.privacy_cost.epsilon:.4g} ("
              + ", ".join(f"{c.description} {c.epsilon:.4g}" for c in response.privacy_cost.components) + ")")
    grid = _anonymized_grid(exported, test_keys, previews, OUT / "anonymized-grid.png")

    coordinator = open_channel(layout.endpoint("coordinator").target, (OUT / "tenant-api-key").read_text().strip())
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator)
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent=f"datasets/{dataset}",
                                                                             shard_count=1), timeout=30)
    output = int(reserved.dataset_version.name.rsplit("/", 1)[1])
    began = time.monotonic()
    name = stub.AnonymizeDataset(an.AnonymizeDatasetRequest(settings=settings(DEFAULT_INTENSITY), dataset=source,
                                                            output_dataset=f"datasets/{dataset}",
                                                            output_version=output), timeout=60).operation.name
    print(f"   {name}: anonymizing datasets/{dataset} at intensity {DEFAULT_INTENSITY} into version {output}",
          flush=True)
    result = operations.result(name, an.AnonymizationResult, progress=True, poll_seconds=1)
    seconds = time.monotonic() - began
    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(name=reserved.dataset_version.name),
                                           timeout=30)
    committed = OperationsClient(coordinator).result(commit.operation.name, cds.DatasetVersion, poll_seconds=0.5)
    anonymized = OUT / "faces-anonymized"
    shutil.rmtree(anonymized, ignore_errors=True)
    DatasetsClient(coordinator).export(committed.name, anonymized)
    before, after = _labels(exported), _labels(anonymized)
    changed = sum(before[k] != v for k, v in after.items())
    print(f"   {committed.name}: {committed.sample_count} anonymized images, committed ({seconds:.0f} s); epsilon per "
          f"person {result.privacy_cost.epsilon:.4g}; released gender differs from the original for {changed} of "
          f"{len(after)}")
    print(f"   originals and three intensities: {grid}; the anonymized dataset: {anonymized}")
    skin = skin_check(exported, anonymized)
    print(f"   skin tone kept: {skin['dark_released_light']} of {skin['dark_originals']} dark originals (tone 4-5) "
          f"released light; lightness original -> released by tone: " + ", ".join(
              f"{t}: {v['original']:.0f} -> {v['released']:.0f}" for t, v in skin["lightness_by_tone"].items()))
    balance = ledger_service_pb2_grpc.LedgerServiceStub(coordinator).GetPrivacyBalance(
        ledger_service_pb2.GetPrivacyBalanceRequest(), timeout=60)
    print(f"   the tenant's privacy ledger (coordinator): {balance.committed_entries} charges spent epsilon "
          f"{balance.spent.epsilon:.6g} composed tightly ({balance.spent_basic.epsilon:.6g} by basic composition) "
          f"of {balance.budget.epsilon:g}; {balance.remaining.epsilon:.6g} left (`umbra ledger balance`)")
    return {"generator": f"{generator.generator.model}/versions/{generator.generator.version}",
            "ledger": {"spent_epsilon": balance.spent.epsilon, "spent_epsilon_basic": balance.spent_basic.epsilon,
                       "spent_delta": balance.spent.delta, "remaining_epsilon": balance.remaining.epsilon,
                       "charges": balance.committed_entries},
            "generator_epsilon": cost.epsilon, "preview_epsilon": {str(k): v for k, v in costs.items()},
            "version": committed.name, "images": committed.sample_count, "seconds": round(seconds, 1),
            "epsilon_per_person": result.privacy_cost.epsilon, "released_gender_changed": changed,
            "grid": str(grid), "export_folder": str(anonymized), "skin_tone": skin}


def _test_keys(tenant: str, dataset: str, version: int) -> list[str]:
    """The keys of the test split, from the committed manifest in the tenant's bucket (the demo's S3 server)."""
    from umbra.storage import keys
    from umbra.storage.datasets import DatasetReader
    from umbra.storage.s3 import S3ObjectStore

    store = S3ObjectStore(os.environ["UMBRA_S3_ENDPOINT"], os.environ["UMBRA_S3_ACCESS_KEY"],
                          os.environ["UMBRA_S3_SECRET_KEY"])
    return [s.key for s in DatasetReader(store, keys.bucket(tenant), dataset, version).samples() if s.split == "test"]


def _anonymized_grid(originals: Path, keys: list[str], previews: dict, path: Path) -> Path:
    import io

    from PIL import Image

    side = 96
    canvas = Image.new("RGB", (len(keys) * side, (1 + len(previews)) * side), "white")
    for c, key in enumerate(keys):
        canvas.paste(_image(originals, key).convert("RGB").resize((side, side), Image.NEAREST), (c * side, 0))
        for r, images in enumerate(previews.values(), start=1):
            image = Image.open(io.BytesIO(images[c].image.data)).convert("RGB")
            canvas.paste(image.resize((side, side), Image.NEAREST), (c * side, r * side))
    canvas.save(path)
    return path


def _private_record(ref) -> dict:
    """The distortion record, read from the tenant's bucket (the demo's S3 server)."""
    from umbra.storage.s3 import S3ObjectStore

    store = S3ObjectStore(os.environ["UMBRA_S3_ENDPOINT"], os.environ["UMBRA_S3_ACCESS_KEY"],
                          os.environ["UMBRA_S3_SECRET_KEY"])
    return json.loads(store.get(ref.bucket, ref.key))


def skin_check(originals: Path, released: Path) -> dict:
    """Whether the kept skin tone survived: each face's skin lightness (the median luminance of the box across
    its cheeks and nose, where the synthetic faces' skin is), original and released, by the original's tone
    ("1" lightest .. "5" darkest). A dark original (tone 4 or 5) is "released light" when its released face is
    at least as light as the originals of tone 2 are on average."""
    import numpy as np
    from PIL import Image

    def lightness(path: Path) -> float:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float64)
        side = grey.shape[0]
        return float(np.median(grey[int(0.5 * side):int(0.7 * side), int(0.3 * side):int(0.7 * side)]))

    lines = (originals / "labels.csv").read_text().splitlines()
    column = lines[0].split(",").index("skin_tone")
    tone = {row[0]: row[column] for row in (line.split(",") for line in lines[1:])}
    pairs = {name: (lightness(originals / "images" / name), lightness(released / "images" / name))
             for name in tone if (released / "images" / name).is_file()}
    by_tone = {t: [pairs[n] for n in pairs if tone[n] == t] for t in sorted(set(tone.values()))}
    light = float(np.mean([o for o, _ in by_tone.get("2", [])])) if by_tone.get("2") else math.inf
    dark = [n for n in pairs if tone[n] in ("4", "5")]
    released_light = sorted(n for n in dark if pairs[n][1] >= light)
    return {"lightness_by_tone": {t: {"original": round(float(np.mean([o for o, _ in v])), 1),
                                      "released": round(float(np.mean([r for _, r in v])), 1), "faces": len(v)}
                                  for t, v in by_tone.items() if v},
            "tone_2_original_lightness": round(light, 1), "dark_originals": len(dark),
            "dark_released_light": len(released_light), "dark_released_light_files": released_light[:20]}


def _labels(folder: Path) -> dict[str, str]:
    lines = (folder / "labels.csv").read_text().splitlines()
    columns = lines[0].split(",")
    return {row[0].rsplit(".", 1)[0]: dict(zip(columns, row, strict=True))["gender"]
            for row in (line.split(",") for line in lines[1:])}


def _mdp_grid(originals: Path, released: Path, record: dict, path: Path, count: int = 8) -> Path:
    from PIL import Image

    side = 96
    rows = record["samples"][:count]
    canvas = Image.new("RGB", (3 * side, count * side), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate((_image(originals, row["source"]), _image(originals, row["start"]),
                                   _image(released, row["key"]))):
            canvas.paste(image.convert("RGB").resize((side, side), Image.NEAREST), (c * side, r * side))
    canvas.save(path)
    return path


def _image(folder: Path, key: str):
    from PIL import Image

    return Image.open(next((folder / "images").glob(f"{key}.*")))


def digests(folder: Path) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the S3 server and the services running")
    parser.add_argument("--faces", type=int, default=500, help="synthetic faces to upload (default 500)")
    parser.add_argument("--epsilon", type=float, default=8.0, help="privacy budget of the DP classifier (default 8)")
    parser.add_argument("--inference-port", type=int, default=INFERENCE_PORT,
                        help=f"gRPC port of the inference server the demo starts (default {INFERENCE_PORT})")
    parser.add_argument("--review-port", type=int, default=REVIEW_PORT,
                        help=f"the coordinator's review page, http://127.0.0.1:PORT/ (default {REVIEW_PORT})")
    parser.add_argument("--replicas", type=int, choices=(1, 2), default=1,
                        help="coordinator replicas: 1 on SQLite (default), or 2 on PostgreSQL, the one driving the "
                             "main job SIGKILLed while it anonymizes the dataset")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    home = layout.home()
    began_demo = time.monotonic()
    running = [s for s in layout.SERVICES if health_of(layout.endpoint(s).target, timeout=1.0) != "UNREACHABLE"]
    if running:
        print(f"something already answers on the ports of: {', '.join(running)}. The demo starts its own services "
              f"(with its S3 server and inference server); stop them first (`.venv/bin/umbra down`), or give the "
              f"demo other ports (UMBRA_<SERVICE>_PORT) and another UMBRA_HOME.", file=sys.stderr)
        return 1
    report: dict = {"home": str(home), "services": {}}
    steps = Steps(report)
    stops: list[tuple[str, Callable[[], object]]] = []  # what the demo started, stopped in reverse order
    triton: subprocess.Popen | None = None
    replicas: Replicas | None = None
    try:
        step("1. starting a real S3 server, the five services and the inference server"
             + (" (the coordinator as two replicas on PostgreSQL)" if args.replicas == 2 else ""))
        if s3_running():
            print("   an S3 server (deploy/s3/rgw.sh) is already running: using it, and leaving it running")
        else:
            stops.append(("the S3 server", lambda: subprocess.run(["bash", str(RGW), "stop"], check=False)))
        try:
            s3 = start_s3()
        except subprocess.CalledProcessError as exc:
            print(f"   the S3 server did not start: `deploy/s3/rgw.sh {exc.cmd[-1]}` exited {exc.returncode} "
                  f"(its logs are under .build/rgw-data/log unless UMBRA_S3_DATA says otherwise)", file=sys.stderr)
            return 1
        inference_url = f"127.0.0.1:{args.inference_port}"
        os.environ.update(s3, UMBRA_STORE="s3", UMBRA_INFERENCE_URL=inference_url)  # the services inherit these
        os.environ["UMBRA_REVIEW_PORT"] = str(args.review_port)  # only the coordinator serves it
        if args.replicas == 2:
            try:
                database = start_postgres(stops)
            except subprocess.CalledProcessError as exc:
                print(f"   PostgreSQL did not start: `deploy/postgres/pg.sh {exc.cmd[-1]}` exited {exc.returncode} "
                      f"(its log is under .build/postgres-data unless UMBRA_PG_DATA says otherwise)", file=sys.stderr)
                return 1
            replicas = Replicas(home, database, free_port())
            for index in (0, 1):  # each replica a fresh data folder, as a new pod
                shutil.rmtree(home / f"coordinator-replica-{index}", ignore_errors=True)
            # `umbra up` starts replica 0; every service reaches the ledger at either replica
            os.environ.update(UMBRA_DATABASE_URL=database, UMBRA_JOB_LEASE_SECONDS=f"{LEASE_SECONDS:g}",
                              UMBRA_COORDINATOR_DATA_DIR=str(home / "coordinator-replica-0"),
                              UMBRA_COORDINATOR_URL=replicas.target)
        started = time.monotonic()
        triton = start_inference_server(home, args.inference_port)
        stops.append(("the inference server", lambda: stop_process_group(triton)))
        stops.append(("the services", lambda: local.down(list(layout.SERVICES))))
        if local.up(list(layout.SERVICES)) != 0:
            print("   the services did not all start (their logs are named above)", file=sys.stderr)
            return 1
        if replicas is not None:
            stops.append(("the second coordinator replica", replicas.stop_second))
            replicas.start_second()
        report["start_seconds"] = round(time.monotonic() - started, 2)
        steps.run("services", "2. calling each service with its credential", lambda: call_services(home, replicas))
        steps.run("dataset", "3. a tenant uploads a face dataset", lambda: upload_dataset(home, args.faces))
        steps.run("classifier", f"4. a DP classifier (epsilon {args.epsilon:g}) trained, evaluated and served on "
                                f"Triton", lambda: train_and_serve(
                                    home, report["dataset"]["tenant"], report["dataset"]["version"],
                                    Path(report["dataset"]["export_folder"]), args.epsilon, inference_url),
                  needs=("dataset",))
        steps.run("augmdp", "5. an AugMDP release of the training split (distortion service), committed by the "
                            "coordinator", lambda: release_augmdp(
                                home, report["dataset"]["tenant"], report["dataset"]["version"],
                                report["classifier"]["model_version"], Path(report["dataset"]["export_folder"])),
                  needs=("dataset", "classifier"))
        steps.run("anonymized", "6. faces anonymized by the DP latent generator (anonymizer service), committed by "
                                "the coordinator", lambda: anonymize_faces(
                                    home, report["dataset"]["tenant"], report["dataset"]["version"]),
                  needs=("dataset", "classifier"))
        steps.run("protection_job", "7. the main job through the coordinator: previews, a scripted reviewer's "
                                    "answers, the dataset anonymized at the accepted intensity, the classifier "
                                    "updated by unlearning, the report; the updated classifier published and queried",
                  lambda: protection_job(report["classifier"]["model_version"], report["classifier"]["classes"],
                                         report["dataset"]["version"],
                                         Path(report["dataset"]["export_folder"]), inference_url,
                                         tenant=report["dataset"]["tenant"], replicas=replicas),
                  needs=("dataset", "classifier", "anonymized"))  # step 6 trained the generator the job reuses
    finally:
        if stops and not args.keep:
            step("stopping what the demo started")
            for _, stop in reversed(stops):
                stop()
    report["seconds"] = round(time.monotonic() - began_demo, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "demo.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(OUT / "demo.json")
    problems = [f"step {which} failed" for which in steps.failed]
    problems += [f"{name} is {s['health']}" for name, s in report["services"].items() if s["health"] != "SERVING"]
    checks = {"dataset": ("exported_identical", "the exported dataset differs from the upload"),
              "classifier": ("predicted_images", "the served classifier predicted nothing"),
              "augmdp": ("labels_kept", "the AugMDP release changed labels"),
              "anonymized": ("images", "the anonymized version is empty"),
              "protection_job": ("report", "the protection job wrote no report")}
    if "protection_job" in report and not report["protection_job"].get("predicted_images"):
        problems.append("the updated classifier, published, predicted nothing")
    problems += [words for key, (field, words) in checks.items() if key in report and not report[key].get(field)]
    if problems:
        print(f"\nWhat was seen: {OUT / 'demo.json'}\nService logs: {home / 'logs'}")
    else:
        print(f"\nResults: {OUT / 'demo.json'} (dataset exported to {OUT / 'faces-export'}; the classifier's "
              f"predictions in {OUT / 'predictions.json'}; the AugMDP release in {OUT / 'faces-augmdp'}, drawn in "
              f"{OUT / 'augmdp-grid.png'}; the anonymized dataset in {OUT / 'faces-anonymized'}, drawn beside its "
              f"originals in {OUT / 'anonymized-grid.png'}; the updated classifier's predictions in "
              f"{OUT / 'predictions-updated.json'})\nThe protection job's report: {OUT / 'report' / 'report.html'} "
              f"(and report.pdf)\nService logs: {home / 'logs'}")
    review_page = f"http://127.0.0.1:{args.review_port}/"
    if args.keep:
        print(f"The review page: {review_page} (sign in with the tenant's key, in {OUT / 'tenant-api-key'})")
    else:
        print(f"The review page was at {review_page}; run `make demo` with `--keep` (python scripts/demo.py --keep) "
              "to leave it up and sign in with the key in out/demo/tenant-api-key")
    if args.keep and triton is not None:
        print(f"Still running: `.venv/bin/umbra status`, Triton at {inference_url} (pid {triton.pid}); stop with "
              f"`.venv/bin/umbra down`, `kill -- -{triton.pid}` and `deploy/s3/rgw.sh stop`.")
    if args.keep and replicas is not None and replicas.second is not None:
        print(f"Also the second coordinator replica at {replicas.targets[1]} (pid {replicas.second.pid}; "
              f"`kill {replicas.second.pid}`) and PostgreSQL (`deploy/postgres/pg.sh stop`).")
    print(f"\nThe demo took {report['seconds']:.0f} s. " + ("Every step worked." if not problems else
          "It did not fully work: " + "; ".join(problems) + "."))
    return 1 if problems else 0


def call_services(home: Path, replicas: Replicas | None = None) -> dict:
    """Step 2: each service's health, and a call with its credential (the admin key for the coordinator)."""
    admin_key = (home / "secrets" / "admin-key").read_text().strip()
    service_token = (home / "secrets" / "service-token").read_text().strip()
    services = {}
    found = [(s, layout.endpoint(s).target) for s in layout.SERVICES]
    if replicas is not None:
        found.insert(1, ("coordinator-1", replicas.targets[1]))
    for service, target in found:
        credential = admin_key if service.startswith("coordinator") else service_token
        listed = list(OperationsClient(open_channel(target, credential)).list())
        services[service] = {"address": target, "health": health_of(target), "operations": len(listed)}
        print(f"   {service:12} {target:21} health {services[service]['health']}")
    return services


def upload_dataset(home: Path, faces_count: int) -> dict:
    """Step 3: a tenant (with the demo's privacy budget) uploads synthetic faces and exports them back."""
    coordinator = layout.endpoint("coordinator").target
    admin_key = (home / "secrets" / "admin-key").read_text().strip()
    tenant_id = f"demo-{secrets.token_hex(3)}"
    budget = privacy_pb2.PrivacyBudget(epsilon=DEMO_BUDGET, delta=DEMO_DELTA)
    created = tenant_service_pb2_grpc.TenantServiceStub(open_channel(coordinator, admin_key)).CreateTenant(
        tenant_service_pb2.CreateTenantRequest(tenant_id=tenant_id,
                                               tenant=tenant_service_pb2.Tenant(privacy_budget=budget)), timeout=30)
    key_file = OUT / "tenant-api-key"
    OUT.mkdir(parents=True, exist_ok=True)
    key_file.write_text(created.api_key_secret + "\n")
    key_file.chmod(0o600)
    given = created.tenant.privacy_budget
    print(f"   tenant {tenant_id}: bucket {created.tenant.bucket}, privacy budget epsilon {given.epsilon:g} at delta "
          f"{given.delta:g}, API key in {key_file}")
    faces = OUT / "faces"
    shutil.rmtree(faces, ignore_errors=True)
    synthetic.write_folder(faces, faces_count, size=64, seed=0)
    print(f"   {faces_count} synthetic faces (gender, skin tone, glasses, smile, hair colour, age) in {faces}")
    client = DatasetsClient(open_channel(coordinator, created.api_key_secret))
    began = time.monotonic()
    version = client.upload(faces, "faces", progress=True)
    seconds = time.monotonic() - began
    print(f"   {version.name}: {version.sample_count} images, {version.shard_count} shard(s), splits "
          f"{dict(version.split_counts)}, labels {list(version.label_columns)} ({seconds:.1f} s)")
    exported = OUT / "faces-export"
    shutil.rmtree(exported, ignore_errors=True)
    client.export(version.name, exported)
    identical = digests(exported) == digests(faces)
    print(f"   exported back to {exported}: byte-identical to the source: {identical}")
    return {"tenant": tenant_id, "version": version.name, "images": version.sample_count,
            "shards": version.shard_count, "upload_seconds": round(seconds, 2), "exported_identical": identical,
            "export_folder": str(exported), "privacy_budget": {"epsilon": given.epsilon, "delta": given.delta}}


REVIEWER_TASTE = (0.78, 0.85)  # the intensities the scripted reviewer accepts; the coordinator never sees it


def protection_job(classifier: str, classes: str, dataset_version: str, images: Path, inference_url: str, *,
                   tenant: str = "", replicas: Replicas | None = None) -> dict:
    """Step 7: the main job through the coordinator's public API. The job reuses the tenant's generator trained
    on the dataset (step 6). A scripted reviewer looks at each round's preview (what changed, what a face
    recognizer still finds, what it cost), answers more or less privacy until the intensity suits it, and
    accepts; the coordinator then anonymizes the whole dataset at that intensity, commits it, updates the
    classifier of step 4 to the released images by feature unlearning (verified against retraining) and writes
    the report. The tenant then publishes the updated classifier to Triton and queries it. With `replicas`, the
    replica driving the job is SIGKILLed while the dataset is anonymized, and the other carries the job on."""

    import numpy as np

    key = (OUT / "tenant-api-key").read_text().strip()
    channel = open_channel(replicas.target if replicas else layout.endpoint("coordinator").target, key)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    model, number = classifier.removeprefix("models/").split("/versions/")
    dataset, version = dataset_version.removeprefix("datasets/").split("/versions/")
    spec = job_service_pb2.ProtectionJobSpec(
        dataset=refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=int(version)),
        protected_attributes=["gender"], kept_attributes=["skin_tone"], preview_size=8, seed=0,
        model=refs_pb2.ModelRef(model=f"models/{model}", version=int(number)), verify_unlearning=True,
        budget=privacy_pb2.PrivacyBudget(epsilon=DEMO_BUDGET, delta=DEMO_DELTA), policy=load_policy(POLICY))
    job_id = f"protect-{secrets.token_hex(3)}"
    op = stub.CreateProtectionJob(job_service_pb2.CreateProtectionJobRequest(
        job_id=job_id, spec=spec, request_id=str(uuid.uuid4())), timeout=60).operation
    name = f"jobs/{job_id}"
    print(f"   {name} started ({op.name}): protect gender, keep skin tone, 8 test faces per preview, update "
          f"{classifier} by unlearning; policy {POLICY.relative_to(ROOT)}", flush=True)
    _wait_for_feedback(stub, name)
    low, high = REVIEWER_TASTE
    rounds = []
    while True:
        shown = _shown_preview(stub, name)
        r = shown.round
        changed = sum(1 for pair in shown.pairs for a in pair.released_attributes if a.attribute == "gender"
                      and a.category != _gender_of(pair.original.sample_key))
        pixels = [_pixel_change(p.original.data, p.anonymized.data) for p in shown.pairs]
        answer = (job_service_pb2.FEEDBACK_MORE_PRIVACY if r.intensity < low else
                  job_service_pb2.FEEDBACK_LESS_PRIVACY if r.intensity > high else job_service_pb2.FEEDBACK_ACCEPT)
        words = job_service_pb2.Feedback.Name(answer).removeprefix("FEEDBACK_").lower().replace("_", " ")
        print(f"   round {len(rounds) + 1} at intensity {r.intensity:.4f}: released gender differs for {changed} of "
              f"{len(shown.pairs)}, mean pixel change {np.mean(pixels):.1f}/255, a face recognizer re-identifies "
              f"{r.risk['reid_rank1']:.0%} (rank 1 among {r.risk['reid_gallery']:.0f}), a gender classifier "
              f"still finds the true gender of {r.risk.get('gender_classifier_agreement', 0):.0%}, epsilon "
              f"{r.privacy_cost.epsilon:.4g} (budget left {r.budget_left.epsilon:.4g}) -> the reviewer answers: "
              f"{words}", flush=True)
        for criterion in r.criteria:
            print(f"      policy: {criterion.summary}")
        rounds.append({"intensity": r.intensity, "answer": words, "gender_changed": changed,
                       "reid_rank1": r.risk["reid_rank1"], "epsilon": r.privacy_cost.epsilon,
                       "gender_classifier_agreement": r.risk.get("gender_classifier_agreement"),
                       "mean_pixel_change": float(np.mean(pixels))})
        stub.SubmitFeedback(job_service_pb2.SubmitFeedbackRequest(round=r.name, feedback=answer,
                                                                  request_id=str(uuid.uuid4())), timeout=60)
        if answer == job_service_pb2.FEEDBACK_ACCEPT:
            break
    operation, takeover = op.name, None
    if replicas is not None:
        takeover = _kill_the_driver(replicas, tenant, job_id, key)
        operation = _carried_on(stub, name, op.name)
    job = OperationsClient(channel).result(operation, job_service_pb2.ProtectionJob, progress=True, poll_seconds=1)
    report = stub.GetReport(job_service_pb2.GetReportRequest(job=name), timeout=60)
    folder = OUT / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_bytes(report.json_content)
    (folder / "report.html").write_bytes(report.html_content)
    if report.pdf_content:
        (folder / "report.pdf").write_bytes(report.pdf_content)
    metrics = dict(report.metrics)
    print(f"   the report's verdict: {'the release meets' if report.policy_met else 'the release does not meet'} "
          f"the policy ({sum(c.met for c in report.criteria)} of {len(report.criteria)} criteria met)")
    for criterion in report.criteria:
        print(f"      {criterion.summary}")
    anonymized = f"{job.anonymized_dataset.dataset}/versions/{job.anonymized_dataset.version}"
    print(f"   accepted intensity {job.accepted_intensity:.4f} after {len(rounds)} rounds (the reviewer's taste, "
          f"kept from the coordinator: {low}-{high}); {anonymized} committed")
    print(f"   epsilon per person, every preview and the dataset composed: {metrics['epsilon_total']:.4g} "
          f"(previews {metrics['preview_epsilon_share']:.0%} of it)")
    unlearning = json.loads(report.json_content)["unlearning"]
    v = unlearning["verification"]
    updated = f"{job.unlearned_model.model}/versions/{job.unlearned_model.version}"
    print(f"   {updated}: {classifier} updated by {unlearning['method']} unlearning, "
          f"{unlearning['changed_samples']} training images revised, loss on them {unlearning['loss_before']:.4f} "
          f"-> {unlearning['loss_after']:.4f} in {unlearning['seconds']:.1f} s (retraining: "
          f"{v['retrain_seconds']:.1f} s)" + (f"; the second-order step was refused by the service's safety check "
                                              f"({unlearning['second_order_refused']})"
                                              if unlearning["second_order_refused"] else ""))
    print(f"   test accuracy ({v['test_count']} images): original {v['accuracy_original']:.3f}, updated "
          f"{v['accuracy_unlearned']:.3f}, retrained {v['accuracy_retrained']:.3f}; agreement with the retrained "
          f"model {v['agreement_with_retrained']:.3f}; {v['probe_attribute']} probe on the features " + ", ".join(
              f"{k} {x:.3f}" for k, x in sorted(v["probe_balanced_accuracy"].items())))
    print(f"   the report: {folder / 'report.html'}")
    publishing = model_service_pb2_grpc.ModelServiceStub(channel).PublishModel(cms.PublishModelRequest(
        publication_id="gender-protected", request_id=secrets.token_hex(16), model=job.unlearned_model), timeout=60)
    published = OperationsClient(channel).result(publishing.operation.name, cms.Publication, timeout=180,
                                                 poll_seconds=1)
    print(f"   {published.name}: the updated classifier served as {published.served_model_name} at "
          f"{published.endpoint}")
    sample = sorted((images / "images").iterdir())[:8]
    command, env = predict_command(sample, published.name, classes,
                                   replicas.target if replicas else layout.endpoint("coordinator").target, key)
    predicted = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    (OUT / "predictions-updated.json").write_text(predicted)
    rows = json.loads(predicted)
    for row in rows[:4]:
        print(f"   umbra models predict {Path(row['image']).name}: gender {row['class']} ({row['probability']:.2f})")
    done = {"job": name, "rounds": rounds, "accepted_intensity": job.accepted_intensity, "anonymized": anonymized,
            "metrics": metrics, "report": str(folder / "report.html"), "updated_model": updated,
            "unlearning": unlearning, "served_model_name": published.served_model_name,
            "predicted_images": len(rows), "predictions": str(OUT / "predictions-updated.json")}
    if takeover is not None:
        done["takeover"] = takeover | {"finished_on": f"replica {1 - takeover['killed_replica']}",
                                       "state": job_service_pb2.ProtectionJob.State.Name(job.state)}
    return done


def _kill_the_driver(replicas: Replicas, tenant: str, job: str, key: str, timeout: float = 600) -> dict:
    """SIGKILLs the replica that holds the job's lease a few seconds into anonymizing the dataset, then waits until
    the other replica holds the lease: what was seen, and how long the takeover took."""
    def stage_on(driving: int, operation: str) -> tuple[bool, str]:
        op = OperationsClient(open_channel(replicas.targets[driving], key)).get(operation)
        metadata = job_service_pb2.ProtectionJobMetadata()
        op.metadata.Unpack(metadata)
        return op.done, metadata.progress.stage

    deadline, stage = time.monotonic() + timeout, ""
    while True:
        driving = replicas.driver(tenant, job)
        operation = replicas.lease(tenant, job)[1]
        if driving is not None and operation:
            done, stage = stage_on(driving, operation)
            if stage.startswith("anonymizing"):
                break
            if done or stage.startswith(("commit", "measuring", "training", "retraining", "updating", "writing")):
                raise RuntimeError(f"jobs/{job} went past anonymizing ({stage!r}) before the demo could kill its "
                                   f"driver")
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs/{job} did not start anonymizing within {timeout:.0f} s")
        time.sleep(0.2)
    time.sleep(1)  # into it
    stage = stage_on(driving, operation)[1] or stage
    pid = replicas.pids()[driving]
    survivor = replicas.pids()[1 - driving]
    os.kill(pid, signal.SIGKILL)  # nothing is flushed, no handler runs
    killed = time.monotonic()
    try:
        os.waitpid(pid, 0)  # both replicas are this process's children
    except ChildProcessError:
        pass
    print(f"   SIGKILL to coordinator replica {driving} (pid {pid}), which drove the job, while {stage}", flush=True)
    while f":{survivor}:" not in replicas.lease(tenant, job)[0]:
        if time.monotonic() - killed > LEASE_SECONDS + 60:
            raise TimeoutError(f"no replica took jobs/{job} over within {LEASE_SECONDS + 60:.0f} s")
        time.sleep(0.05)
    seconds = time.monotonic() - killed
    print(f"   coordinator replica {1 - driving} (pid {survivor}) holds the job's lease {seconds:.1f} s later (lease "
          f"{LEASE_SECONDS:g} s) and carries the job on from its rows in PostgreSQL", flush=True)
    return {"killed_replica": driving, "killed_pid": pid, "killed_while": stage, "survivor_pid": survivor,
            "takeover_seconds": round(seconds, 2), "lease_seconds": LEASE_SECONDS}


def _carried_on(stub, name: str, before: str, timeout: float = 120) -> str:
    """The job's operation on the replica that took it over (the job names it once that replica runs it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = stub.GetProtectionJob(job_service_pb2.GetProtectionJobRequest(name=name), timeout=30).job
            if job.operation and job.operation != before:
                print(f"   {name} goes on as {job.operation}", flush=True)
                return job.operation
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        time.sleep(0.5)
    raise TimeoutError(f"{name} named no new operation within {timeout:.0f} s of the takeover")


def _pixel_change(original: bytes, released: bytes) -> float:
    """The mean absolute change per pixel channel (of 255), the original taken to the released image's size."""
    import io

    import numpy as np
    from PIL import Image

    after = Image.open(io.BytesIO(released)).convert("RGB")
    before = Image.open(io.BytesIO(original)).convert("RGB").resize(after.size, Image.BOX)
    return float(np.abs(np.asarray(before, dtype=float) - np.asarray(after, dtype=float)).mean())


def _wait_for_feedback(stub, name: str, timeout: float = 900) -> None:
    """Prints the job's stages while it prepares (its generator), until it awaits feedback."""
    deadline, said = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        job = stub.GetProtectionJob(job_service_pb2.GetProtectionJobRequest(name=name), timeout=60).job
        state = job_service_pb2.ProtectionJob.State.Name(job.state).removeprefix("STATE_").lower()
        if state != said:
            print(f"   {name}: {state.replace('_', ' ')}", flush=True)
            said = state
        if job.state != job_service_pb2.ProtectionJob.STATE_PENDING and \
                job.state != job_service_pb2.ProtectionJob.STATE_PREPARING:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{name} was still preparing after {timeout:.0f} s")


def _shown_preview(stub, name: str, timeout: float = 600) -> job_service_pb2.GetPreviewResponse:
    """The preview of the job's current round once it is shown (an answered round is not shown again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            shown = stub.GetPreview(job_service_pb2.GetPreviewRequest(job=name), timeout=60)
            if shown.round.feedback == job_service_pb2.FEEDBACK_UNSPECIFIED:
                return shown
        except grpc.RpcError as exc:
            if UmbraRpcError.from_rpc_error(exc).reason != "ROUND_NOT_READY":
                raise
        time.sleep(0.5)
    raise TimeoutError(f"{name} showed no preview within {timeout:.0f} s")


def _gender_of(key: str) -> str:
    """A sample's gender label in the exported original dataset (step 3)."""
    return _labels(OUT / "faces-export").get(key, "")


if __name__ == "__main__":
    sys.exit(main())
