"""One dataset version anonymized across two anonymizer replicas (real gRPC, separate operation stores, one object
store, the coordinator's ledger): the coordinator's fan-out (umbra.services.coordinator.sharding) writes the same
staged shards, upload manifest and record as one replica alone; a call given `shards` writes those shards only
and leaves the charge reserved for the call that finishes the version; bad `shards` are refused by field; a
replica that is down, or stopped mid-dataset, leaves its shards to the other.

The shards are made small (16 samples) so that 96 faces of 16 px make 6 of them and a tiny random generator keeps
this as fast as the other anonymizer tests: every replica runs in this process, so they all see the same sizes.
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from support import SERVICE_TOKEN, free_port, start_service, status_details, write_tiny_generator
from umbra.anonymization import dataset as anonymized_dataset
from umbra.anonymization import shards as shard_rule
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.services.coordinator.sharding import anonymize_sharded
from umbra.storage import keys
from umbra.storage.datasets import DatasetReader
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BUCKET, FACES, SHARD = "umbra-acme", 96, 16
SHARDS = FACES // SHARD
SOURCE = refs_pb2.DatasetRef(dataset="datasets/faces", version=1)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    objects = str(home / "objects")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shard_rule, "BATCH", 8)
        patch.setattr(shard_rule, "SHARD_SAMPLES", SHARD)
        coordinator = start_service("coordinator", home, budget=(1e5, 0.1))
        # two replicas: their own operations (as two pods), one object store
        replicas = [start_service("anonymizer", home / f"replica-{i}", coordinator=coordinator,
                                  UMBRA_STORE_DIR=objects) for i in range(2)]
        faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", FACES, size=16, seed=4)
        DatasetsClient(coordinator.channel()).upload(faces, "faces", progress=False, shard_bytes=8_000,
                                                     policy=SizePolicy(size=16))
        store = LocalObjectStore(home / "objects")
        write_tiny_generator(store, BUCKET)
        reference = reserve(coordinator)
        result = run(replicas[0], request(reference))  # one replica, as before sharding existed
        yield coordinator, replicas, store, home, reference, result
        for served in (*replicas, coordinator):
            served.running.stop(grace=0)


def reserve(coordinator) -> int:
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel())
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent="datasets/faces", shard_count=1),
                                             timeout=30).dataset_version
    return int(reserved.name.rsplit("/", 1)[1])


def request(version: int, **fields) -> an.AnonymizeDatasetRequest:
    settings = an.AnonymizationSettings(generator=refs_pb2.ModelRef(model="models/gen", version=1),
                                        protected_attributes=["gender"], kept_attributes=["age"], intensity=0.75,
                                        steps=2, seed=5)
    return an.AnonymizeDatasetRequest(settings=settings, dataset=SOURCE, output_dataset="datasets/faces",
                                      output_version=version, **fields)


def run(replica, message: an.AnonymizeDatasetRequest) -> an.AnonymizationResult:
    channel = replica.channel()
    op = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel).AnonymizeDataset(message, timeout=60).operation
    return OperationsClient(channel).result(op.name, an.AnonymizationResult, poll_seconds=0.2, timeout=300)


def written(store: LocalObjectStore, version: int) -> dict[str, bytes]:
    """What a run left under the version, less run.json (the fingerprint, which names the output version)."""
    prefix = keys.version_prefix("faces", version)
    return {info.key.removeprefix(prefix): store.get(BUCKET, info.key) for info in store.list(BUCKET, prefix)
            if not info.key.endswith("/run.json")}


def charges(coordinator, version: int) -> list[ls.LedgerEntry]:
    entries = ledger_service_pb2_grpc.LedgerServiceStub(coordinator.channel()).ListLedgerEntries(
        ls.ListLedgerEntriesRequest(), timeout=30).entries
    return [e for e in entries if f"/datasets/faces/versions/{version}/" in e.request_id]


def test_two_replicas_write_the_bytes_of_one(system):
    coordinator, replicas, store, _, reference, alone = system
    expected = written(store, reference)
    shards = sorted(k for k in expected if k.startswith("upload/shards/"))
    assert len(shards) == SHARDS and "upload/manifest.jsonl" in expected and alone.image_count == FACES
    assert not any("/parts/" in k for k in expected)

    version = reserve(coordinator)
    seen: list[tuple[int, int]] = []
    result = anonymize_sharded([r.target for r in replicas], SERVICE_TOKEN, "acme",
                               request(version, request_id="5b0c5d0e-0000-4000-8000-0000000000a1"), store=store,
                               progress=lambda done, total: seen.append((done, total)), poll_seconds=0.2)
    assert written(store, version) == expected  # every staged shard, the upload manifest and the record
    assert result.image_count == FACES and result.left_out == 0 and result.record.key.endswith(
        "private/anonymization-record.json")
    assert seen and seen[-1] == (SHARDS, SHARDS)
    for replica in replicas:  # each replica wrote its own shards (its operation names them)
        parts = [o for o in OperationsClient(replica.channel()).list() if o.done and not o.HasField("error")
                 and o.metadata.Is(an.AnonymizeDatasetMetadata.DESCRIPTOR)]
        metadata = [an.AnonymizeDatasetMetadata.FromString(o.metadata.value) for o in parts]
        assert any(m.shards_done == SHARDS // 2 for m in metadata)
    [charge] = charges(coordinator, version)  # every call shared one charge, committed by the finishing call
    assert charge.state == privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED

    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel())
    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(
        name=f"datasets/faces/versions/{version}"), timeout=30)
    committed = OperationsClient(coordinator.channel()).result(commit.operation.name, cds.DatasetVersion,
                                                               poll_seconds=0.2)
    assert committed.sample_count == FACES


def test_a_call_given_shards_writes_those_shards_only(system):
    coordinator, replicas, store, _, reference, _ = system
    version = reserve(coordinator)
    part = run(replicas[1], request(version, shards=[4, 1]))
    assert part.image_count == 2 * SHARD and not part.HasField("record")
    assert sorted(written(store, version)) == ["private/parts/shard-000001.tar.json",
                                               "private/parts/shard-000004.tar.json",
                                               "upload/shards/shard-000001.tar", "upload/shards/shard-000004.tar"]
    [charge] = charges(coordinator, version)
    assert charge.state == privacy_pb2.PRIVACY_CHARGE_STATE_RESERVED  # counted, left for the finishing call
    whole = run(replicas[0], request(version))  # finishes: the four other shards, then the record and manifest
    assert whole.image_count == FACES and written(store, version) == written(store, reference)
    [charge] = charges(coordinator, version)
    assert charge.state == privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED
    late = run(replicas[1], request(version, shards=[1]))  # a replica back after the version was finished
    assert late.image_count == SHARD and written(store, version) == written(store, reference)  # no part left


@pytest.mark.parametrize("shards", [[SHARDS], [-1], [0, 0], [2, 1, 2]])
def test_bad_shards_are_refused_naming_the_field(system, shards):
    coordinator, replicas, store, _, _, _ = system
    stub = anonymizer_service_pb2_grpc.AnonymizerServiceStub(replicas[0].channel())
    with pytest.raises(grpc.RpcError) as error:
        stub.AnonymizeDataset(request(40, shards=shards), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert status_details(error.value)["fields"] == ["shards"]
    assert not list(store.list(BUCKET, keys.version_prefix("faces", 40)))


def test_a_replica_that_is_down_leaves_its_shards_to_the_other(system):
    coordinator, replicas, store, _, reference, _ = system
    version = reserve(coordinator)
    down = f"127.0.0.1:{free_port()}"
    result = anonymize_sharded([down, replicas[1].target], SERVICE_TOKEN, "acme", request(version), store=store,
                               poll_seconds=0.2)
    assert result.image_count == FACES and written(store, version) == written(store, reference)


def test_a_replica_stopped_mid_dataset_leaves_its_shards_to_the_other(system, monkeypatch):
    coordinator, replicas, store, home, reference, _ = system
    third = start_service("anonymizer", home / "replica-2", coordinator=coordinator,
                          UMBRA_STORE_DIR=str(home / "objects"))
    stopped = threading.Event()
    original = anonymized_dataset._anonymize_batch
    computed: list[int] = []  # the first sample of every batch computed, by either replica

    def stop_midway(job, net, batch, images):
        computed.append(batch.start)
        # the third replica is dealt shards 1, 3 and 5: it is stopped in the middle of shard 3
        if batch.start == 3 * SHARD and not stopped.is_set():
            stopped.set()
            threading.Thread(target=third.running.stop, kwargs={"grace": 5}).start()
            time.sleep(0.5)  # the stop has begun: the run is cancelled before its next batch
        return original(job, net, batch, images)

    monkeypatch.setattr(anonymized_dataset, "_anonymize_batch", stop_midway)
    version = reserve(coordinator)
    result = anonymize_sharded([replicas[0].target, third.target], SERVICE_TOKEN, "acme", request(version),
                               store=store, poll_seconds=0.2)
    assert stopped.is_set()
    assert computed.count(SHARD) == 1  # shard 1, finished before the stop: the other replica skipped it
    assert computed.count(3 * SHARD) == 2 and computed.count(5 * SHARD) == 1  # shard 3 done again, then shard 5
    assert result.image_count == FACES and written(store, version) == written(store, reference)
    record = json.loads(store.get(BUCKET, result.record.key))
    assert [row["key"] for row in record["samples"]] == [s.key for s in DatasetReader(store, BUCKET, "faces",
                                                                                      1).samples()]
