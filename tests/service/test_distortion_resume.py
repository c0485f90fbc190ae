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

# Every wait on the release takes what is left of one budget (a deadline), so the waits together fit inside the
# test's timeout. RESERVE is what can still run past that deadline: restarting the worker (support.serve_process
# allows 60 s), one late answer to each result's last poll (the client's 30 s RPC timeout), stopping the worker
# (60 s), and 30 s for the assertions and the temporary folder.
TIMEOUT = 900  # seconds, the whole test (it took 282 s on 2 cores at load average 5, beside the demo)
RESERVE = 60 + 2 * 30 + 60 + 30
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


class Budget:
    """One deadline for all of a test's waits."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        assert left > 0, f"the test's wait budget ran out before {what}"
        return left


def request(version: int) -> ds.DistortDatasetRequest:
    return ds.DistortDatasetRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), label_column="gender",
        feature_extractor=refs_pb2.ModelRef(model="models/gender", version=1), copies=1, steps=150, batch_size=4,
        seed=1, output_dataset="datasets/faces", output_version=version)


def shards(store, version: int) -> dict[str, str]:
    header, _ = mf.loads(store.get("umbra-acme", keys.upload_manifest("faces", version)).decode().splitlines())
    return header.shard_sha256


def test_killed_release_resumes_at_its_last_finished_shard(tmp_path):
    budget = Budget(TIMEOUT - RESERVE)
    home, port = tmp_path / "home", free_port()
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket("umbra-acme")
    commit_faces(store, "umbra-acme", 64, size=32, seed=6)
    write_extractor(store, "umbra-acme", "gender")
    first_shard = keys.upload_shard("faces", 2, "shard-000000.tar")
    proc = serve_process("distortion", home, port)
    channel = open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="acme")
    stub, operations = distortion_service_pb2_grpc.DistortionServiceStub(channel), OperationsClient(channel)
    try:
        interrupted = stub.DistortDataset(request(2), timeout=min(30, budget.left("the request"))).operation.name
        while store.stat("umbra-acme", keys.private("faces", 2, "parts/shard-000000.tar.json")) is None:
            budget.left("the first shard was finished")
            time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=min(30, budget.left("the killed worker ended")))
        written = store.get("umbra-acme", first_shard)
        assert store.stat("umbra-acme", keys.upload_manifest("faces", 2)) is None  # it was killed mid-release
        proc = serve_process("distortion", home, port)
        resumed = operations.result(interrupted, ds.DistortionResult, poll_seconds=0.5,
                                    timeout=budget.left("the resumed release ended"))
        again = stub.DistortDataset(request(3), timeout=min(30, budget.left("the second request"))).operation.name
        whole = operations.result(again, ds.DistortionResult, poll_seconds=0.5,
                                  timeout=budget.left("the uninterrupted release ended"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert resumed.image_count == whole.image_count == 64
    assert store.get("umbra-acme", first_shard) == written  # kept, not recomputed
    assert shards(store, 2) == shards(store, 3) and len(shards(store, 2)) == 4
    assert resumed.feature_loss == pytest.approx(whole.feature_loss)
    assert any("resumed after a restart" in p.read_text() or "resumed" in p.read_text()
               for p in home.glob("distortion-*.log"))
