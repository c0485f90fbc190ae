"""A distortion worker killed (SIGKILL) mid-release and restarted resumes at its last finished shard: the shards
written before the kill are kept as they were, and the release ends with exactly the bytes of an uninterrupted
one."""

from __future__ import annotations

import signal
import time

import pytest

from support import SERVICE_TOKEN, commit_faces, free_port, serve_process, write_extractor
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.dataset import manifest as mf
from umbra.distortion.v1 import distortion_service_pb2 as ds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.storage import keys
from umbra.storage.local import LocalObjectStore

pytestmark = pytest.mark.slow


def request(version: int) -> ds.DistortDatasetRequest:
    return ds.DistortDatasetRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), label_column="gender",
        feature_extractor=refs_pb2.ModelRef(model="models/gender", version=1), copies=1, steps=150, batch_size=4,
        seed=1, output_dataset="datasets/faces", output_version=version)


def shards(store, version: int) -> dict[str, str]:
    header, _ = mf.loads(store.get("umbra-acme", keys.upload_manifest("faces", version)).decode().splitlines())
    return header.shard_sha256


def test_killed_release_resumes_at_its_last_finished_shard(tmp_path):
    home, port = tmp_path / "home", free_port()
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket("umbra-acme")
    commit_faces(store, "umbra-acme", 64, size=32, seed=6)
    write_extractor(store, "umbra-acme", "gender")
    first_shard = keys.shard("faces", 2, "shard-000000.tar")
    proc = serve_process("distortion", home, port)
    channel = open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="acme")
    stub, operations = distortion_service_pb2_grpc.DistortionServiceStub(channel), OperationsClient(channel)
    try:
        interrupted = stub.DistortDataset(request(2), timeout=30).operation.name
        deadline = time.monotonic() + 120
        while store.stat("umbra-acme", keys.private("faces", 2, "parts/shard-000000.tar.json")) is None:
            assert time.monotonic() < deadline, "the first shard was never finished"
            time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=30)
        written = store.get("umbra-acme", first_shard)
        assert store.stat("umbra-acme", keys.upload_manifest("faces", 2)) is None  # it was killed mid-release
        proc = serve_process("distortion", home, port)
        resumed = operations.result(interrupted, ds.DistortionResult, poll_seconds=0.5, timeout=300)
        whole = operations.result(stub.DistortDataset(request(3), timeout=30).operation.name, ds.DistortionResult,
                                  poll_seconds=0.5, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert resumed.image_count == whole.image_count == 64
    assert store.get("umbra-acme", first_shard) == written  # kept, not recomputed
    assert shards(store, 2) == shards(store, 3) and len(shards(store, 2)) == 4
    assert resumed.feature_loss == pytest.approx(whole.feature_loss)
    assert any("resumed after a restart" in p.read_text() or "resumed" in p.read_text()
               for p in home.glob("distortion-*.log"))
