"""A training worker killed (SIGKILL) mid-training and restarted resumes from its last checkpoint, and the
epsilon it reports is exactly that of an uninterrupted run with the same settings: the steps before the crash
are counted."""

from __future__ import annotations

import signal
import time

import pytest

from support import SERVICE_TOKEN, commit_faces, free_port, serve_process
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import refs_pb2
from umbra.storage.local import LocalObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # its waits add up to 750 s


def request(model: str) -> ts.TrainRequest:
    return ts.TrainRequest(
        model=f"models/{model}", dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), task="smile",
        seed=0, hyperparameters=ts.Hyperparameters(epochs=4, batch_size=32, physical_batch_size=16),
        differential_privacy=ts.DifferentialPrivacy(target_epsilon=4.0, target_delta=1e-3, max_grad_norm=1.0))


def test_killed_training_resumes_with_the_same_epsilon(tmp_path):
    home, port = tmp_path / "home", free_port()
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket("umbra-acme")
    commit_faces(store, "umbra-acme", 200, size=32, seed=4)
    proc = serve_process("training", home, port)
    channel = open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="acme")
    stub, operations = training_service_pb2_grpc.TrainingServiceStub(channel), OperationsClient(channel)
    try:
        interrupted = stub.Train(request("killed"), timeout=30).operation.name
        deadline = time.monotonic() + 120
        while (progress_of(operations.get(interrupted)).done or 0) < 1:  # the epoch-1 checkpoint is written
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.kill()
        proc.wait(timeout=30)
        proc = serve_process("training", home, port)
        resumed = operations.result(interrupted, ts.ModelVersion, poll_seconds=1, timeout=300)
        whole = operations.result(stub.Train(request("whole"), timeout=30).operation.name, ts.ModelVersion,
                                  poll_seconds=1, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert resumed.training_record.steps == whole.training_record.steps
    assert resumed.training_record.privacy_cost.epsilon == pytest.approx(whole.training_record.privacy_cost.epsilon,
                                                                         rel=1e-9)
    assert 0 < whole.training_record.privacy_cost.epsilon <= 4.0
    assert any("resuming operations/" in p.read_text() for p in home.glob("training-*.log"))
