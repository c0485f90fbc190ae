"""What the end-to-end job tests share: services as their own processes (so a test can SIGKILL them), a tenant
with an uploaded face dataset and a generator (or none: the job then trains one), a classifier for the job to update
by unlearning, a scripted reviewer, and the checks that a finished job left exactly what it should (one committed
charge per round and one for the dataset, no reservation, one new version).

Imported by the tests in this folder as `e2e.jobkit` (tests/ is on the path, see pyproject.toml)."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from support import SERVICE_TOKEN, create_tenant, free_port, serve_process, status_details
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.classifiers.registry import ModelRegistry
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.errors import UmbraRpcError
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.diffusion.attributes import schema_for
from umbra.diffusion.generator import build
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.services.coordinator.sharding import derived_request_id
from umbra.storage.datasets import DatasetReader
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

SIZE = 32
GENERATOR = refs_pb2.ModelRef(model="models/gen", version=1)
COMMITTED = privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED
RESERVED = privacy_pb2.PRIVACY_CHARGE_STATE_RESERVED
ANSWER = {"more": js.FEEDBACK_MORE_PRIVACY, "less": js.FEEDBACK_LESS_PRIVACY, "accept": js.FEEDBACK_ACCEPT}


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it does not exit; only this process (started by the test)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def kill(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: nothing is flushed, no handler runs
    proc.wait(timeout=30)


@dataclass
class Stack:
    """A coordinator and anonymizer replicas, each `umbra serve` in its own process, on one local object store;
    with `unlearning`, also the unlearning service and the training service (which trains the classifier a job
    updates, and retrains it to verify the update)."""

    home: Path
    replicas: int = 1
    unlearning: bool = False
    coordinator_port: int = field(default_factory=free_port)
    anonymizer_ports: list[int] = field(default_factory=list)
    unlearning_port: int = field(default_factory=free_port)
    training_port: int = field(default_factory=free_port)
    coordinator: subprocess.Popen | None = None
    anonymizers: list[subprocess.Popen | None] = field(default_factory=list)
    workers: list[subprocess.Popen] = field(default_factory=list)  # the unlearning and training services
    commit_patience: float = 120.0  # the anonymizers' UMBRA_LEDGER_COMMIT_SECONDS

    def __post_init__(self):
        self.anonymizer_ports = [free_port() for _ in range(self.replicas)]
        self.anonymizers = [None] * self.replicas

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.coordinator_port}"

    @property
    def objects(self) -> Path:
        return self.home / "objects"

    @property
    def training_target(self) -> str:
        return f"127.0.0.1:{self.training_port}"

    def start_coordinator(self) -> None:
        self.coordinator = serve_process("coordinator", self.home, self.coordinator_port, UMBRA_GRACE_SECONDS="2",
                                         UMBRA_ANONYMIZER_URLS=",".join(f"127.0.0.1:{p}"
                                                                        for p in self.anonymizer_ports),
                                         UMBRA_UNLEARNING_URL=f"127.0.0.1:{self.unlearning_port}")

    def start_anonymizer(self, index: int) -> None:
        # each replica its own operations (as two pods), one object store
        self.anonymizers[index] = serve_process(
            "anonymizer", self.home, self.anonymizer_ports[index], UMBRA_GRACE_SECONDS="2",
            UMBRA_COORDINATOR_URL=self.target, UMBRA_STORE_DIR=str(self.objects),
            UMBRA_ANONYMIZER_DATA_DIR=str(self.home / f"anonymizer-{index}"),
            UMBRA_LEDGER_COMMIT_SECONDS=str(self.commit_patience))

    def start(self) -> Stack:
        self.start_coordinator()
        for i in range(self.replicas):
            self.start_anonymizer(i)
        if self.unlearning:
            self.workers.append(serve_process("training", self.home, self.training_port, UMBRA_GRACE_SECONDS="2",
                                              UMBRA_COORDINATOR_URL=self.target,
                                              UMBRA_STORE_DIR=str(self.objects)))
            self.workers.append(serve_process("unlearning", self.home, self.unlearning_port,
                                              UMBRA_GRACE_SECONDS="2", UMBRA_COORDINATOR_URL=self.target,
                                              UMBRA_TRAINING_URL=self.training_target,
                                              UMBRA_STORE_DIR=str(self.objects)))
        return self

    def restart_coordinator(self) -> None:
        """SIGKILL the coordinator, then start it again on the same data folder and port."""
        kill(self.coordinator)
        self.start_coordinator()

    def close(self) -> None:
        for proc in (self.coordinator, *self.anonymizers, *self.workers):
            stop(proc)

    def anonymizer_operations(self, index: int, tenant: str) -> OperationsClient:
        return OperationsClient(open_channel(f"127.0.0.1:{self.anonymizer_ports[index]}", SERVICE_TOKEN,
                                             tenant=tenant))

    def unlearning_operations(self, tenant: str) -> OperationsClient:
        return OperationsClient(open_channel(f"127.0.0.1:{self.unlearning_port}", SERVICE_TOKEN, tenant=tenant))

    def logs(self, service: str) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.home.glob(f"{service}-*.log")))


def train_classifier(target: str, tenant: str, task: str = "gender", model: str = "models/gender"
                     ) -> refs_pb2.ModelRef:
    """A small GroupNorm CNN of `task` trained by the training service at `target` on datasets/faces v1 (one
    epoch: a job updates it by unlearning, and retrains it to verify the update, in seconds)."""
    channel = open_channel(target, SERVICE_TOKEN, tenant=tenant)
    op = training_service_pb2_grpc.TrainingServiceStub(channel).Train(ts.TrainRequest(
        model=model, dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), task=task,
        architecture=ts.ARCHITECTURE_GROUPNORM_CNN, seed=0, hyperparameters=ts.Hyperparameters(
            epochs=1, batch_size=16, physical_batch_size=16, learning_rate=2e-3, width=8)), timeout=60).operation
    made = OperationsClient(channel).result(op.name, ts.ModelVersion, poll_seconds=0.5, timeout=600)
    name, _, version = made.name.rpartition("/versions/")
    return refs_pb2.ModelRef(model=name, version=int(version))


def write_generator(store, bucket: str, dataset: str = "faces") -> None:
    """A tiny random generator as the anonymizer's registry holds one (trained on other data: its ε_g is not
    charged here); anonymizing with it is fast and as deterministic as with a trained one."""
    columns: dict[str, list[str]] = {}
    for sample in DatasetReader(store, bucket, dataset, 1).samples():
        for name, value in sample.labels.items():
            columns.setdefault(name, []).append(value)
    config = GeneratorConfig(image_size=SIZE, attributes=schema_for(columns, ["gender", "age"]),
                             channels=(8, 16, 16), attention=False)
    torch.manual_seed(0)
    ModelRegistry(store).write(bucket, "gen", config, build(config).state_dict(),
                               {"kind": "generator", "privacy": {"dp": False},
                                "dataset": {"dataset": "datasets/public", "version": 1}})


class Tenant:
    """One tenant of the coordinator at `target`, calling the public API with its API key."""

    def __init__(self, target: str, tenant: str, key: str):
        self.target, self.name, self.key = target, tenant, key

    @classmethod
    def create(cls, target: str, tenant: str) -> Tenant:
        return cls(target, tenant, create_tenant(target, tenant, budget=(1e6, 0.5)))

    def channel(self) -> grpc.Channel:
        return open_channel(self.target, self.key)

    @property
    def jobs(self) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(self.channel())

    @property
    def operations(self) -> OperationsClient:
        return OperationsClient(self.channel())

    def upload(self, folder: Path, faces: int, seed: int = 4) -> cds.DatasetVersion:
        images = synthetic.write_folder(folder, faces, size=SIZE, seed=seed)
        return DatasetsClient(self.channel()).upload(images, "faces", progress=False, policy=SizePolicy(size=SIZE))

    def create_job(self, job: str, **overrides) -> str:
        fields = dict(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                      protected_attributes=["gender"], kept_attributes=["age"], preview_size=3, generator=GENERATOR,
                      seed=7) | overrides
        created = self.jobs.CreateProtectionJob(js.CreateProtectionJobRequest(
            job_id=job, spec=js.ProtectionJobSpec(**fields), request_id=f"create-{job}"), timeout=60)
        return created.operation.name

    def job(self, job: str) -> js.ProtectionJob:
        return self.jobs.GetProtectionJob(js.GetProtectionJobRequest(name=f"jobs/{job}"), timeout=30).job

    def stage(self, operation: str) -> tuple[bool, str]:
        """(done, progress.stage) of the job's operation; (False, "") while the coordinator cannot answer."""
        try:
            op = self.operations.get(operation)
        except UmbraRpcError as exc:
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False, ""
            raise
        progress = progress_of(op)
        return op.done, progress.stage if progress is not None else ""

    def wait_for_stage(self, operation: str, starts: tuple[str, ...], timeout: float = 300,
                       poll: float = 0.02) -> str:
        """Polls the job's operation until its stage starts with one of `starts`; returns that stage."""
        deadline, seen = time.monotonic() + timeout, []
        while True:
            done, stage = self.stage(operation)
            if stage and (not seen or seen[-1] != stage):
                seen.append(stage)
            if any(stage.startswith(s) for s in starts):
                return stage
            assert not done, f"the job ended before any stage {starts} was seen (stages seen: {seen})"
            assert time.monotonic() < deadline, f"no stage {starts} in {timeout} s (stages seen: {seen})"
            time.sleep(poll)

    def preview(self, job: str, number: int, timeout: float = 300) -> js.GetPreviewResponse:
        """Round `number`'s preview once it is shown (waiting through restarts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                shown = self.jobs.GetPreview(js.GetPreviewRequest(job=f"jobs/{job}"), timeout=30)
                if shown.round.name.endswith(f"/rounds/{number}"):
                    return shown
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE and status_details(exc).get("reason") != \
                        "ROUND_NOT_READY":
                    raise
            assert time.monotonic() < deadline, f"round {number} of {job} was never shown"
            time.sleep(0.2)

    def answer(self, job: str, number: int, answer: str) -> js.SubmitFeedbackResponse:
        return self.jobs.SubmitFeedback(js.SubmitFeedbackRequest(
            round=f"jobs/{job}/rounds/{number}", feedback=ANSWER[answer], request_id=f"{job}-answer-{number}"),
            timeout=30)

    def rounds(self, job: str) -> list[js.FeedbackRound]:
        return list(self.jobs.ListFeedbackRounds(js.ListFeedbackRoundsRequest(parent=f"jobs/{job}", page_size=100),
                                                 timeout=30).rounds)

    def result(self, operation: str, timeout: float = 600) -> js.ProtectionJob:
        return self.operations.result(operation, js.ProtectionJob, poll_seconds=0.5, timeout=timeout)

    def ledger(self) -> list:
        stub = ledger_service_pb2_grpc.LedgerServiceStub(self.channel())
        entries, token = [], ""
        while True:
            page = stub.ListLedgerEntries(ls.ListLedgerEntriesRequest(page_size=100, page_token=token), timeout=60)
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries

    def versions(self, dataset: str = "faces") -> list[cds.DatasetVersion]:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(self.channel())
        return list(stub.ListDatasetVersions(cds.ListDatasetVersionsRequest(parent=f"datasets/{dataset}",
                                                                            page_size=100), timeout=30)
                    .dataset_versions)


# -- the reviewer ---------------------------------------------------------------------------------------------

SCRIPT = ("more", "less", "accept")  # three rounds: 0.5, then 0.75, then 0.625 accepted


def review(tenant: Tenant, job: str, script=SCRIPT, *, first: int = 1, before_answer=None, after_answer=None
           ) -> dict[int, js.GetPreviewResponse]:
    """Answers rounds first..len(script) by the script; returns what each round showed. `before_answer(number,
    shown)` and `after_answer(number, response)` run around each answer (a test kills the coordinator there)."""
    shown = {}
    for number in range(first, len(script) + 1):
        shown[number] = tenant.preview(job, number)
        if before_answer is not None:
            before_answer(number, shown[number])
            shown[number] = tenant.preview(job, number)  # after a restart: the same round, still shown
        response = tenant.answer(job, number, script[number - 1])
        if after_answer is not None:
            after_answer(number, response)
    return shown


# -- what a finished job must leave -----------------------------------------------------------------------------

def preview_charge(tenant: str, job: str, number: int) -> str:
    """The ledger's request_id for round `number`'s preview (protection.py derives the preview's request_id)."""
    return "anonymizer/Anonymize/" + derived_request_id("job", tenant, job, "round", number)


def check_charges(tenant: Tenant, job: str, rounds: int, version: int, *, generator_trained: bool = False) -> None:
    """Exactly one committed charge per round and one for the anonymized version (and one for the generator, when
    the job trained it); nothing reserved anywhere."""
    entries = tenant.ledger()
    trained = [e.state for e in entries if e.spent_by == "TrainGenerator"]
    assert trained == ([COMMITTED] if generator_trained else []), trained
    assert not [e.request_id for e in entries if e.state == RESERVED], "a reservation was left behind"
    for number in range(1, rounds + 1):
        mine = [e for e in entries if e.request_id == preview_charge(tenant.name, job, number)]
        assert [e.state for e in mine] == [COMMITTED], (number, mine)
    beyond = [e for e in entries if e.request_id == preview_charge(tenant.name, job, rounds + 1)]
    assert not beyond, "a round that was never shown was charged"
    dataset = [e for e in entries if e.spent_by == "AnonymizeDataset"
               and f"/datasets/faces/versions/{version}/" in e.request_id]
    assert [e.state for e in dataset] == [COMMITTED], dataset
    previews = [e for e in entries if e.spent_by == "Anonymize" and e.state == COMMITTED]
    assert len(previews) == rounds, [e.request_id for e in previews]


def check_versions(tenant: Tenant, job: js.ProtectionJob, faces: int) -> None:
    """The original and exactly one new, committed, anonymized version: the job's."""
    versions = tenant.versions()
    assert [(v.name, v.state, v.origin) for v in versions] == [
        ("datasets/faces/versions/1", cds.DatasetVersion.STATE_COMMITTED, cds.DatasetVersion.ORIGIN_UPLOAD),
        ("datasets/faces/versions/2", cds.DatasetVersion.STATE_COMMITTED, cds.DatasetVersion.ORIGIN_ANONYMIZED)]
    assert job.anonymized_dataset == refs_pb2.DatasetRef(dataset="datasets/faces", version=2)
    assert versions[1].sample_count == faces


def dataset_request(job: js.ProtectionJob, version: int) -> an.AnonymizeDatasetRequest:
    """The AnonymizeDataset request the job's settings make, into `version` (a reference run by one replica)."""
    spec = job.spec
    settings = an.AnonymizationSettings(generator=spec.generator, protected_attributes=spec.protected_attributes,
                                        kept_attributes=spec.kept_attributes, intensity=job.accepted_intensity,
                                        seed=spec.seed)
    return an.AnonymizeDatasetRequest(settings=settings, dataset=spec.dataset, output_dataset=spec.dataset.dataset,
                                      output_version=version)
