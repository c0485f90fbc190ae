"""Processes, signals and restarts: each server runs as its own process here, as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import duration_pb2, empty_pb2
from google.rpc import code_pb2

from sleeper import call as sleeper_call
from support import ADMIN_KEY, SERVICE_TOKEN, free_port
from umbra.client import health_of, protos
from umbra.client.channel import open_channel
from umbra.client.operations import progress_of

SLEEPER = Path(__file__).parent.parent / "sleeper.py"
pytestmark = pytest.mark.slow


def spawn(args: list[str], home: Path, port: int, service: str = "training") -> subprocess.Popen:
    env = dict(os.environ, UMBRA_HOME=str(home), UMBRA_SERVICE_TOKEN=SERVICE_TOKEN, UMBRA_ADMIN_KEY=ADMIN_KEY,
               UMBRA_GRACE_SECONDS="10", **{f"UMBRA_{service.upper()}_PORT": str(port)})
    log = open(home / f"{service}-{port}.log", "ab")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while health_of(f"127.0.0.1:{port}", timeout=0.5) != "SERVING":
        log = (home / f"{service}-{port}.log").read_text()
        assert proc.poll() is None, f"server exited with {proc.returncode}: {log}"
        assert time.monotonic() < deadline, "server did not become healthy in 30 s"
        time.sleep(0.1)
    return proc


def test_sigterm_lets_the_in_flight_call_finish_and_exits_zero(tmp_path):
    port = free_port()
    proc = spawn([sys.executable, str(SLEEPER)], tmp_path, port)
    channel = open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN)
    outcome: dict = {}

    def in_flight():
        started = time.monotonic()
        try:
            sleeper_call(channel, "Sleep", duration_pb2.Duration(seconds=2), empty_pb2.Empty, timeout=30)
            outcome["code"] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            outcome["code"] = exc.code()
        outcome["seconds"] = time.monotonic() - started

    caller = threading.Thread(target=in_flight)
    caller.start()
    time.sleep(0.7)  # the call is now sleeping inside the server
    proc.send_signal(signal.SIGTERM)
    caller.join(timeout=30)
    assert proc.wait(timeout=30) == 0
    assert outcome["code"] == grpc.StatusCode.OK
    assert outcome["seconds"] >= 1.9


def test_real_service_exits_zero_on_sigterm(tmp_path):
    port = free_port()
    proc = spawn([sys.executable, "-m", "umbra.cli.main", "serve", "unlearning"], tmp_path, port, "unlearning")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = (tmp_path / f"unlearning-{port}.log").read_text()
    assert '"msg": "received SIGTERM"' in log and '"msg": "stopped"' in log


def test_operation_survives_sigkill_and_restart(tmp_path):
    protos.load_all()
    port = free_port()
    proc = spawn([sys.executable, str(SLEEPER)], tmp_path, port)
    channel = open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="acme")
    op = sleeper_call(channel, "Start", duration_pb2.Duration(seconds=60), lro.Operation, timeout=10)
    ops = operations_pb2_grpc.OperationsStub(channel)
    deadline = time.monotonic() + 10
    while progress_of(ops.GetOperation(lro.GetOperationRequest(name=op.name), timeout=5)).done < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=10)

    proc = spawn([sys.executable, str(SLEEPER)], tmp_path, port)
    try:
        after = ops.GetOperation(lro.GetOperationRequest(name=op.name), timeout=10)
        assert after.done
        assert after.error.code == code_pb2.ABORTED
        assert "interrupted" in after.error.message
        assert progress_of(after).stage == "interrupted"
        assert progress_of(after).done >= 2  # the progress recorded before the crash is kept
        # Waiting on it answers at once; other tenants still cannot see it.
        waited = ops.WaitOperation(lro.WaitOperationRequest(name=op.name), timeout=10)
        assert waited.done
        other = operations_pb2_grpc.OperationsStub(open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="other"))
        with pytest.raises(grpc.RpcError) as err:
            other.GetOperation(lro.GetOperationRequest(name=op.name), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_sigterm_during_an_operation_records_it_as_interrupted(tmp_path):
    port = free_port()
    proc = spawn([sys.executable, str(SLEEPER)], tmp_path, port)
    channel = open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="acme")
    op = sleeper_call(channel, "Start", duration_pb2.Duration(seconds=60), lro.Operation, timeout=10)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # the running work is cancelled at its next check, well within the grace
    proc = spawn([sys.executable, str(SLEEPER)], tmp_path, port)
    try:
        after = operations_pb2_grpc.OperationsStub(channel).GetOperation(
            lro.GetOperationRequest(name=op.name), timeout=10)
        assert after.done and after.error.code in (code_pb2.ABORTED, code_pb2.CANCELLED)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
