"""`make demo`: run the furthest part of Umbra's protection pipeline that works, on this machine.

1. start a real S3 server (Ceph RADOS Gateway, deploy/s3/rgw.sh), the five services (each its own process) and
   the inference server (a real Triton, serving what is published in object storage);
2. check each service's health and call it with its credential;
3. create a tenant, generate labelled synthetic faces, upload them as a dataset (validated, sharded, sent to
   S3 through presigned URLs, committed), and export the committed version back to check it byte for byte;
4. train a DP-SGD gender classifier on it through the training service (epsilon in the operation's progress),
   starting from weights pretrained on other, public synthetic faces; evaluate it on the test split, publish
   it to Triton and classify exported images with `umbra models predict` (tritonclient over gRPC);
5. release an AugMDP version (two copies) of the training split through the distortion service, with the
   classifier of step 4 as the feature extractor: the coordinator reserves the version, the distortion service
   writes it, the coordinator commits it; export it and draw original / start image / released image;
6. train a DP diffusion generator through the anonymizer (public pretraining on the synthetic faces of step 4,
   then DP-SGD on the tenant's training split), preview eight test faces at three intensities with the ε of
   each mechanism, and anonymize the whole dataset (gender protected, skin tone kept) into a version the
   coordinator reserves and commits; draw originals beside the previews;
7. update the gender classifier of step 4 to the anonymized images by second-order feature unlearning
   (unlearning service), verified against retraining from scratch on them (training service):
   out/demo/unlearning.json;
8. show that the protection job (coordinator) is not built yet; write what was seen to out/demo/demo.json and
   stop everything (unless --keep).

    python scripts/demo.py [--keep] [--faces N] [--epsilon E]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc

from umbra.classifiers import recipes
from umbra.cli import local
from umbra.client import UmbraRpcError, health_of, layout
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import (dataset_service_pb2_grpc, job_service_pb2, job_service_pb2_grpc, tenant_service_pb2,
                                  tenant_service_pb2_grpc)
from umbra.dataset import synthetic
from umbra.distortion.v1 import distortion_service_pb2 as dds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "demo"
RGW = ROOT / "deploy" / "s3" / "rgw.sh"
INFERENCE_PORT = 8001  # Triton's usual gRPC port
PUBLIC_FACES = 1500  # public synthetic faces for pretraining
DEMO_EPOCHS = 8
GENERATOR_PRETRAIN_EPOCHS = 6  # the generator's public pretraining (no DP) on the same public faces
# The demo dataset's privacy budget. Large, because a preview at a low intensity releases a barely noised image:
# its image ε is in the thousands (see the README's intensity table); every charge is in the ledger.
DEMO_BUDGET = 20_000.0


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_s3() -> dict[str, str]:
    subprocess.run(["bash", str(RGW), "start"], check=True)
    lines = subprocess.run(["bash", str(RGW), "env"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)


def start_inference_server(home: Path, port: int) -> subprocess.Popen:
    """`python -m umbra.inference.triton --store`: Triton serving what is published in the object store."""
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with open(home / "logs" / "inference.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "umbra.inference.triton", "--store", "--grpc-port", str(port),
                                 "--workspace", str(home / "triton")], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def train_and_serve(home: Path, tenant: str, dataset_version: str, images: Path, epsilon: float,
                    inference_url: str) -> dict:
    """Step 4, through the training service (internal: the demo presents the service credential for the tenant, as
    the coordinator will once its job loop drives training)."""
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
    exported = stub.ExportModelVersion(ts.ExportModelVersionRequest(
        model=refs_pb2.ModelRef(model="models/gender", version=int(trained.name.rsplit("/", 1)[1])),
        served_model_name="gender"), timeout=120)
    print(f"   published as {exported.served_model_name} on the inference server at {exported.endpoint}")
    sample = sorted((images / "images").iterdir())[:8]
    classes = ",".join(trained.training_record.classes)
    command = [sys.executable, "-m", "umbra.cli.main", "models", "predict", *map(str, sample), "--model",
               exported.served_model_name, "--endpoint", inference_url, "--classes", classes, "--json"]
    predicted = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    (OUT / "predictions.json").write_text(predicted)
    rows = json.loads(predicted)
    for row in rows[:4]:
        print(f"   umbra models predict {Path(row['image']).name}: gender {row['class']} ({row['probability']:.2f})")
    return {"model_version": trained.name, "epsilon": cost.epsilon, "delta": cost.delta,
            "initialized_from": start.name, "test_accuracy": evaluation.accuracy,
            "test_balanced_accuracy": evaluation.balanced_accuracy, "served_model_name": exported.served_model_name,
            "endpoint": exported.endpoint, "predicted_images": len(rows),
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
    """Step 6: a DP generator (public pretraining on the synthetic faces of step 4, then DP-SGD on the tenant's
    training split), previews of eight test faces at three intensities, and the whole dataset anonymized at
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

    public = train(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/public-faces", version=1), condition_attributes=["gender"],
        model="models/public-generator", image_size=32, epochs=GENERATOR_PRETRAIN_EPOCHS, batch_size=64, seed=0))
    generator = train(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset=source.dataset, version=source.version, split="train"),
        condition_attributes=["gender", "skin_tone"], model="models/generator", image_size=32, epochs=2,
        batch_size=64, learning_rate=2e-3, seed=0, initialize_from=public.generator,
        privacy=an.GeneratorPrivacy(target_epsilon=10.0, target_delta=1e-4, max_grad_norm=1.0, noise_multiplicity=2),
        budget=privacy_pb2.PrivacyBudget(epsilon=DEMO_BUDGET, delta=1e-3)))
    cost = generator.privacy_cost
    print(f"   generator {generator.generator.model} v{generator.generator.version}: epsilon_g {cost.epsilon:.3f} at "
          f"delta {cost.delta:g}, pretrained on public synthetic faces")

    def settings(intensity: float) -> an.AnonymizationSettings:
        return an.AnonymizationSettings(generator=generator.generator, protected_attributes=["gender"],
                                        kept_attributes=["skin_tone"], intensity=intensity, seed=0,
                                        budget=privacy_pb2.PrivacyBudget(epsilon=DEMO_BUDGET, delta=1e-3))

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
    return {"generator": f"{generator.generator.model}/versions/{generator.generator.version}",
            "generator_epsilon": cost.epsilon, "preview_epsilon": {str(k): v for k, v in costs.items()},
            "version": committed.name, "images": committed.sample_count, "seconds": round(seconds, 1),
            "epsilon_per_person": result.privacy_cost.epsilon, "released_gender_changed": changed,
            "grid": str(grid), "export_folder": str(anonymized)}


def unlearn_onto_anonymized(home: Path, tenant: str, model_version: str, original: str, anonymized: str) -> dict:
    """Step 7: the published gender model updated to the anonymized images by second-order feature unlearning
    (unlearning service), verified against retraining from scratch on them (training service)."""
    from umbra.unlearning.v1 import unlearning_service_pb2 as us
    from umbra.unlearning.v1 import unlearning_service_pb2_grpc

    service_token = (home / "secrets" / "service-token").read_text().strip()
    channel = open_channel(layout.endpoint("unlearning").target, service_token, tenant=tenant)
    model, number = model_version.removeprefix("models/").split("/versions/")

    def ref(name: str) -> refs_pb2.DatasetRef:
        dataset, version = name.removeprefix("datasets/").split("/versions/")
        return refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=int(version))

    request = us.UnlearnRequest(model=refs_pb2.ModelRef(model=f"models/{model}", version=int(number)),
                                original=ref(original), revision=us.Revision(revised=ref(anonymized)),
                                method=us.METHOD_SECOND_ORDER, verify=True, probe_attribute="skin_tone",
                                output_model=f"models/{model}-anonymized")
    name = unlearning_service_pb2_grpc.UnlearningServiceStub(channel).Unlearn(request, timeout=60).operation.name
    print(f"   {name}: unlearning {model_version} onto {anonymized}", flush=True)
    result = OperationsClient(channel).result(name, us.UnlearningResult, progress=True, poll_seconds=1)
    v = result.verification
    unlearned = f"{result.unlearned.model}/versions/{result.unlearned.version}"
    print(f"   {unlearned}: second order, {result.changed_samples} training images revised, {result.removed_samples} "
          f"removed; tau {result.tau:.3g}, LiSSA scale {result.lissa_scale:g}, {result.gradient_evaluations} "
          f"gradient evaluations, {result.seconds:.1f} s (retraining: {v.retrain_seconds:.1f} s)")
    print(f"   test accuracy ({v.test_count} images): original {v.accuracy_original:.3f}, unlearned "
          f"{v.accuracy_unlearned:.3f}, retrained {v.accuracy_retrained:.3f}; agreement with the retrained model "
          f"{v.agreement_with_retrained:.3f}; skin-tone probe " + ", ".join(
              f"{k} {x:.3f}" for k, x in sorted(v.probe_balanced_accuracy.items())))
    if result.outside_original_privacy_guarantee:
        print("   the model was trained with DP-SGD: its epsilon does not cover this update (said in the record)")
    summary = {"unlearned": unlearned, "retrained": f"{v.retrained.model}/versions/{v.retrained.version}",
               "changed_samples": result.changed_samples, "removed_samples": result.removed_samples,
               "tau": result.tau, "lissa_scale": result.lissa_scale,
               "gradient_evaluations": result.gradient_evaluations, "unlearn_seconds": round(result.seconds, 2),
               "retrain_seconds": round(v.retrain_seconds, 2), "accuracy_original": v.accuracy_original,
               "accuracy_unlearned": v.accuracy_unlearned, "accuracy_retrained": v.accuracy_retrained,
               "agreement_with_retrained": v.agreement_with_retrained, "parameter_distance": v.parameter_distance,
               "probe_balanced_accuracy": dict(v.probe_balanced_accuracy),
               "outside_original_privacy_guarantee": result.outside_original_privacy_guarantee}
    path = OUT / "unlearning.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"   the comparison: {path}")
    return summary


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
    args = parser.parse_args()
    home = layout.home()
    report: dict = {"home": str(home), "services": {}}
    step("1. starting a real S3 server, the five services and the inference server")
    s3 = start_s3()
    inference_url = f"127.0.0.1:{INFERENCE_PORT}"
    os.environ.update(s3, UMBRA_STORE="s3", UMBRA_INFERENCE_URL=inference_url)  # the services inherit these
    started = time.monotonic()
    triton = start_inference_server(home, INFERENCE_PORT)
    if local.up(list(layout.SERVICES)) != 0:
        triton.terminate()
        return 1
    report["start_seconds"] = round(time.monotonic() - started, 2)
    try:
        step("2. calling each service with its credential")
        admin_key = (home / "secrets" / "admin-key").read_text().strip()
        service_token = (home / "secrets" / "service-token").read_text().strip()
        for service in layout.SERVICES:
            target = layout.endpoint(service).target
            credential = admin_key if service == "coordinator" else service_token
            listed = list(OperationsClient(open_channel(target, credential)).list())
            report["services"][service] = {"address": target, "health": health_of(target), "operations": len(listed)}
            print(f"   {service:12} {target:21} health {report['services'][service]['health']}")

        step("3. a tenant uploads a face dataset")
        coordinator = layout.endpoint("coordinator").target
        tenant_id = f"demo-{secrets.token_hex(3)}"
        created = tenant_service_pb2_grpc.TenantServiceStub(open_channel(coordinator, admin_key)).CreateTenant(
            tenant_service_pb2.CreateTenantRequest(tenant_id=tenant_id), timeout=30)
        key_file = OUT / "tenant-api-key"
        OUT.mkdir(parents=True, exist_ok=True)
        key_file.write_text(created.api_key_secret + "\n")
        key_file.chmod(0o600)
        print(f"   tenant {tenant_id}: bucket {created.tenant.bucket}, API key in {key_file}")
        faces = OUT / "faces"
        shutil.rmtree(faces, ignore_errors=True)
        synthetic.write_folder(faces, args.faces, size=64, seed=0)
        print(f"   {args.faces} synthetic faces (gender, skin tone, glasses, smile, hair colour, age) in {faces}")
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
        report["dataset"] = {"tenant": tenant_id, "version": version.name, "images": version.sample_count,
                             "shards": version.shard_count, "upload_seconds": round(seconds, 2),
                             "exported_identical": identical, "export_folder": str(exported)}

        step(f"4. a DP classifier (epsilon {args.epsilon:g}) trained, evaluated and served on Triton")
        report["classifier"] = train_and_serve(home, tenant_id, version.name, exported, args.epsilon, inference_url)

        step("5. an AugMDP release of the training split (distortion service), committed by the coordinator")
        report["augmdp"] = release_augmdp(home, tenant_id, version.name, report["classifier"]["model_version"],
                                          exported)

        step("6. faces anonymized by the DP diffusion generator (anonymizer service), committed by the coordinator")
        report["anonymized"] = anonymize_faces(home, tenant_id, version.name)

        step("7. the published model updated to the anonymized images by feature unlearning (unlearning service)")
        report["unlearning"] = unlearn_onto_anonymized(home, tenant_id, report["classifier"]["model_version"],
                                                       version.name, report["anonymized"]["version"])

        step("8. the protection job itself is not built yet, and says so")
        try:
            job_service_pb2_grpc.JobServiceStub(open_channel(coordinator, created.api_key_secret)).ListProtectionJobs(
                job_service_pb2.ListProtectionJobsRequest(), timeout=10)
        except grpc.RpcError as exc:
            err = UmbraRpcError.from_rpc_error(exc)
            report["protection_job"] = {"code": err.code.name, "message": err.message}
            print(f"   ListProtectionJobs -> {err.code.name}: {err.message}")
    finally:
        if not args.keep:
            step("stopping the services and the S3 server")
            local.down(list(layout.SERVICES))
            triton.terminate()
            triton.wait(timeout=60)
            subprocess.run(["bash", str(RGW), "stop"], check=False)
    tmp = OUT / "demo.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(OUT / "demo.json")
    print(f"\nResults: {OUT / 'demo.json'} (dataset exported to {OUT / 'faces-export'}; the classifier's "
          f"predictions in {OUT / 'predictions.json'}; the AugMDP release in {OUT / 'faces-augmdp'}, drawn in "
          f"{OUT / 'augmdp-grid.png'}; the anonymized dataset in {OUT / 'faces-anonymized'}, drawn beside its "
          f"originals in {OUT / 'anonymized-grid.png'}; the unlearned model's comparison with retraining in "
          f"{OUT / 'unlearning.json'})\nService logs: {home / 'logs'}")
    if args.keep:
        print(f"Still running: `.venv/bin/umbra status`, Triton at {inference_url} (pid {triton.pid}); stop with "
              f"`.venv/bin/umbra down`, `kill {triton.pid}` and `deploy/s3/rgw.sh stop`.")
    healthy = all(s["health"] == "SERVING" for s in report["services"].values())
    served = report.get("classifier", {}).get("predicted_images", 0) > 0
    released = report.get("augmdp", {}).get("labels_kept", False)
    anonymized = report.get("anonymized", {}).get("images", 0) > 0
    unlearned = report.get("unlearning", {}).get("changed_samples", 0) > 0
    return 0 if (healthy and report.get("dataset", {}).get("exported_identical") and served and released
                 and anonymized and unlearned) else 1


if __name__ == "__main__":
    sys.exit(main())
