"""The distortion service over real gRPC, with the coordinator beside it on the same object store: AugMDP of an
uploaded dataset into a version the coordinator reserved, committed by the coordinator's own checks, read
back with the original labels; the private record of start images; bad input refused before any compute."""

from __future__ import annotations

import dataclasses
import json

import grpc
import pytest

from support import SERVICE_TOKEN, commit_faces, start_service, status_details, with_fields, write_extractor
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.dataset import manifest as mf
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.distortion.v1 import distortion_service_pb2 as ds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.storage import keys
from umbra.storage.datasets import DatasetReader
from umbra.storage.local import LocalObjectStore

pytestmark = pytest.mark.slow
FACES = 40


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    coordinator = start_service("coordinator", home)
    distortion = start_service("distortion", home)
    faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", FACES, size=32, seed=3)
    DatasetsClient(coordinator.channel()).upload(faces, "faces", progress=False, shard_bytes=20_000,
                                                 policy=SizePolicy(size=32))
    store = LocalObjectStore(home / "objects")
    write_extractor(store, "umbra-acme", "gender")
    write_extractor(store, "umbra-acme", "smile", task="smile")
    write_extractor(store, "umbra-acme", "large", image_size=64)
    store.ensure_bucket("umbra-other")
    commit_faces(store, "umbra-other", 12, size=32)
    yield coordinator, distortion, store
    distortion.running.stop(grace=0)
    coordinator.running.stop(grace=0)


def distort_request(**overrides) -> ds.DistortDatasetRequest:
    return with_fields(ds.DistortDatasetRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), label_column="gender",
        feature_extractor=refs_pb2.ModelRef(model="models/gender", version=1), copies=2, steps=5, batch_size=4,
        seed=3, output_dataset="datasets/faces", output_version=2), **overrides)


def test_augmdp_release_committed_by_the_coordinator(services):
    coordinator, distortion, store = services
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel())
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent="datasets/faces", shard_count=1),
                                             timeout=30).dataset_version
    assert reserved.name == "datasets/faces/versions/2"

    channel = distortion.channel()
    stub, operations = distortion_service_pb2_grpc.DistortionServiceStub(channel), OperationsClient(channel)
    op = stub.DistortDataset(distort_request(), timeout=30).operation
    result = operations.result(op.name, ds.DistortionResult, poll_seconds=0.5)
    assert result.image_count == 2 * FACES and result.released.version == 2 and result.feature_loss > 0
    metadata = ds.DistortDatasetMetadata()
    operations.get(op.name).metadata.Unpack(metadata)
    assert metadata.shards_done == 2 * 3  # 40 samples in shards of four batches of 4, for each of 2 copies
    assert metadata.progress.done == metadata.progress.total == 2 * FACES

    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(name=reserved.name), timeout=30)
    OperationsClient(coordinator.channel()).result(commit.operation.name, cds.DatasetVersion, poll_seconds=0.5)
    committed = datasets.GetDatasetVersion(cds.GetDatasetVersionRequest(name=reserved.name), timeout=30)
    assert committed.dataset_version.state == cds.DatasetVersion.STATE_COMMITTED
    assert committed.dataset_version.sample_count == 2 * FACES

    originals = {s.key: (s, image) for s, image in DatasetReader(store, "umbra-acme", "faces", 1).iter_images()}
    released = list(DatasetReader(store, "umbra-acme", "faces", 2).iter_images())
    assert sorted(s.key for s, _ in released) == sorted(f"{k}-c{c}" for k in originals for c in (0, 1))
    for sample, image in released:
        source, source_image = originals[sample.key.rsplit("-c", 1)[0]]
        assert sample.labels == source.labels and sample.split == source.split  # the ORIGINAL labels
        assert image != source_image

    record = json.loads(store.get("umbra-acme", result.record.key))
    assert result.record.key == keys.private("faces", 2, "distortion-record.json")
    assert record["seed"] == 3 and record["settings"]["copies"] == 2 and record["method"] == "augmdp"
    rows = {row["key"]: row for row in record["samples"]}
    assert len(rows) == 2 * FACES
    for row in rows.values():
        source = originals[row["source"]][0]
        assert row["start_class"] != source.labels["gender"]  # never a start image of the same class
        assert originals[row["start"]][0].labels["gender"] == row["start_class"]
    assert not list(store.list("umbra-acme", keys.private("faces", 2, "parts/shard-000000.tar.json")))

    exported = datasets.ExportDatasetVersion(cds.ExportDatasetVersionRequest(name=reserved.name), timeout=30)
    assert [s.shard for s in exported.shard_sources] == [f"shard-{i:06d}.tar" for i in range(6)]
    assert exported.manifest_source.shard == "manifest"  # the record is not among what is exported


@pytest.mark.parametrize(("overrides", "code", "field"), [
    ({"copies": 0}, grpc.StatusCode.INVALID_ARGUMENT, "copies"),
    ({"copies": -1}, grpc.StatusCode.INVALID_ARGUMENT, "copies"),
    ({"steps": -5}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
    ({"momentum": 1.0}, grpc.StatusCode.INVALID_ARGUMENT, "momentum"),
    ({"label_column": "mood"}, grpc.StatusCode.INVALID_ARGUMENT, "label_column"),
    ({"feature_extractor": refs_pb2.ModelRef(model="models/smile", version=1)},
     grpc.StatusCode.INVALID_ARGUMENT, "feature_extractor"),
    ({"feature_extractor": refs_pb2.ModelRef(model="models/large", version=1)},
     grpc.StatusCode.INVALID_ARGUMENT, "feature_extractor"),
    ({"feature_extractor": refs_pb2.ModelRef(model="models/absent", version=1)}, grpc.StatusCode.NOT_FOUND, None),
    ({"output_version": 0}, grpc.StatusCode.INVALID_ARGUMENT, "output_version"),
    ({"output_version": 1}, grpc.StatusCode.INVALID_ARGUMENT, "output_version"),
    ({"dataset": refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="holdout")},
     grpc.StatusCode.INVALID_ARGUMENT, "dataset.split"),
])
def test_bad_input_is_refused_before_any_compute(services, overrides, code, field):
    _, distortion, store = services
    stub = distortion_service_pb2_grpc.DistortionServiceStub(distortion.channel())
    with pytest.raises(grpc.RpcError) as error:
        stub.DistortDataset(distort_request(**({"output_version": 9} | overrides)), timeout=30)
    assert error.value.code() == code, error.value.details()
    if field:
        assert status_details(error.value)["fields"] == [field]
    assert not list(store.list("umbra-acme", keys.version_prefix("faces", 9)))  # nothing was written


def test_single_class_and_other_tenants_models_are_refused(services):
    _, distortion, store = services
    mono = commit_faces(store, "umbra-acme", 12, dataset="mono", size=32, seed=9)
    samples = [dataclasses.replace(s, labels=s.labels | {"gender": "1"}) for s in mono.samples()]
    store.put("umbra-acme", keys.manifest("mono", 1), mf.dumps(mono.header, samples))  # every face labelled "1"
    stub = distortion_service_pb2_grpc.DistortionServiceStub(distortion.channel())
    with pytest.raises(grpc.RpcError) as error:
        stub.DistortDataset(distort_request(dataset=refs_pb2.DatasetRef(dataset="datasets/mono", version=1),
                                            output_dataset="datasets/mono"), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "two classes" in error.value.details()
    assert status_details(error.value)["fields"] == ["dataset"]
    # another tenant naming acme's extractor: not found in its own bucket
    other = distortion_service_pb2_grpc.DistortionServiceStub(open_channel(distortion.target, SERVICE_TOKEN,
                                                                            tenant="other"))
    with pytest.raises(grpc.RpcError) as error:
        other.DistortDataset(distort_request(), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "models/gender" in error.value.details()


def test_cancel_stops_between_batches_and_publishes_nothing(services):
    _, distortion, store = services
    channel = distortion.channel()
    stub, operations = distortion_service_pb2_grpc.DistortionServiceStub(channel), OperationsClient(channel)
    op = stub.DistortDataset(distort_request(output_version=7, steps=3000, copies=1), timeout=30).operation
    operations.cancel(op.name)
    done = operations.wait(op.name, poll_seconds=0.2, timeout=120)
    assert done.done and done.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert store.stat("umbra-acme", keys.upload_manifest("faces", 7)) is None  # nothing to commit
