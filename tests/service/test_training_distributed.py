"""Train on two processes over real gRPC: a rank killed mid-run ends the operation interrupted; the retry (the same
request_id) resumes from the last checkpoint, and the epsilon it records counts each step exactly once (the
steps of the run's epochs, and the accountant's epsilon for them). `processes` beyond the worker's setting is
refused by field."""

from __future__ import annotations

import logging
import multiprocessing
import time

import grpc
import pytest
from google.rpc import code_pb2

from support import SERVICE_TOKEN, commit_faces, config_for, status_details, with_fields
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.privacy.dp_sgd import poisson_rate
from umbra.runtime.operations.runner import interrupted
from umbra.runtime.server import create_server
from umbra.services.registry import spec
from umbra.storage.local import LocalObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
EPOCHS, BATCH, SIGMA, DELTA = 3, 32, 0.8, 1e-3


def request(**overrides) -> ts.TrainRequest:
    return with_fields(ts.TrainRequest(
        model="models/smile", dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), task="smile",
        seed=0, request_id="7d0c63f2-2f4e-4f59-9d33-1c1e4b8f0a11", processes=2,
        hyperparameters=ts.Hyperparameters(epochs=EPOCHS, batch_size=BATCH, physical_batch_size=16, width=8),
        differential_privacy=ts.DifferentialPrivacy(noise_multiplier=SIGMA, target_delta=DELTA, max_grad_norm=1.0,
                                                    accountant=privacy_pb2.PRIVACY_ACCOUNTANT_RDP)), **overrides)


def rank(number: int):
    found = [p for p in multiprocessing.active_children() if p.name == f"umbra-train-rank-{number}"]
    return found[0] if found else None


def test_a_killed_rank_interrupts_and_the_retry_resumes_charging_epsilon_once(tmp_path, caplog):
    home = tmp_path / "home"
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket("umbra-acme")
    reader = commit_faces(store, "umbra-acme", 200, size=32, seed=4)
    running = create_server(config_for("training", home), spec("training")).start()
    channel = open_channel(f"127.0.0.1:{running.port}", SERVICE_TOKEN, tenant="acme")
    stub, operations = training_service_pb2_grpc.TrainingServiceStub(channel), OperationsClient(channel)
    caplog.set_level(logging.INFO, logger="umbra.classifiers.job")
    try:
        first = stub.Train(request(), timeout=30).operation.name
        deadline = time.monotonic() + 120
        while (progress_of(operations.get(first)).done or 0) < 1:  # the epoch-1 checkpoint is saved
            assert time.monotonic() < deadline and not operations.get(first).done
            time.sleep(0.1)
        victim = rank(1)
        assert victim is not None and rank(0) is not None
        victim.kill()
        killed = operations.wait(first, poll_seconds=0.5, timeout=60)
        assert killed.done and interrupted(killed), killed.error
        assert "rank 1" in killed.error.message and killed.error.code == code_pb2.ABORTED
        assert rank(0) is None  # the other rank is stopped with it

        retried = stub.Train(request(), timeout=30).operation.name  # the same request_id: a new run of it
        assert retried != first
        trained = operations.result(retried, ts.ModelVersion, poll_seconds=0.5, timeout=180)
    finally:
        running.stop(grace=0)
    assert any("resuming the run" in r.getMessage() and "epoch-" in r.getMessage() for r in caplog.records)
    record = trained.training_record
    n = sum(1 for s in reader.samples() if s.split == "train" and "smile" in s.labels)
    q = poisson_rate(n, BATCH)
    assert record.processes == 2
    assert record.steps == EPOCHS * round(1 / q)  # the epoch cut short by the kill is not counted again

    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(SIGMA, q, record.steps)]
    assert record.privacy_cost.epsilon == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)
    assert not list(store.list("umbra-acme", "models/smile/runs/"))  # its checkpoints are gone with the version


def test_processes_beyond_the_worker_setting_are_refused(tmp_path):
    home = tmp_path / "home"
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket("umbra-acme")
    commit_faces(store, "umbra-acme", 40, size=32)
    running = create_server(config_for("training", home), spec("training")).start()
    try:
        stub = training_service_pb2_grpc.TrainingServiceStub(
            open_channel(f"127.0.0.1:{running.port}", SERVICE_TOKEN, tenant="acme"))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Train(request(processes=3, request_id=""), timeout=30)
    finally:
        running.stop(grace=0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(refused.value)["metadata"]["field"] == "processes"
