"""Cancelling a protection job that is still queued (PENDING), over real gRPC: the coordinator runs with two
operation threads, both held by jobs whose preview a stand-in anonymizer holds back, so a third job waits in
the queue. Cancelled there (by `umbra jobs cancel`, by the CancelProtectionJob RPC, or by google.longrunning
CancelOperation on its operation), it ends CANCELLED at once and never runs: when a thread frees up, its
operation finds it cancelled and ends CANCELLED without calling any worker or charging anything. Cancelling a
finished job is FAILED_PRECONDITION."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from google.rpc import code_pb2

from support import free_port, start_service, status_details
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.cli import main as cli
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc, ledger_service_pb2, ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.services.coordinator.sharding import derived_request_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
GENERATOR = refs_pb2.ModelRef(model="models/faces-gen", version=1)  # named: the job does not look for one


class HeldAnonymizer(anonymizer_service_pb2_grpc.AnonymizerServiceServicer):
    """Holds every preview until `release()`, then refuses it: the jobs asking for one keep the coordinator's
    operation threads busy until then. Records the request_id of every preview asked for."""

    def __init__(self):
        self.asked: list[str] = []
        self._gate = threading.Event()
        self._lock = threading.Lock()

    def Anonymize(self, request, context):
        with self._lock:
            self.asked.append(request.request_id)
            gate = self._gate
        gate.wait(120)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "held back by the test")

    def release(self) -> None:
        with self._lock:
            gate, self._gate = self._gate, threading.Event()
        gate.set()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    held = HeldAnonymizer()
    anonymizer = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    anonymizer_service_pb2_grpc.add_AnonymizerServiceServicer_to_server(held, anonymizer)
    port = free_port()
    anonymizer.add_insecure_port(f"127.0.0.1:{port}")
    anonymizer.start()
    # UMBRA_MAX_WORKERS=4: the coordinator's operation runner has max(2, 4 // 4) = 2 threads
    served = start_service("coordinator", home, UMBRA_MAX_WORKERS="4", UMBRA_ANONYMIZER_URLS=f"127.0.0.1:{port}",
                           UMBRA_UNLEARNING_URL=f"127.0.0.1:{free_port()}",
                           UMBRA_DISTORTION_URL=f"127.0.0.1:{free_port()}")
    faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", 40, size=32, seed=4)
    DatasetsClient(served.channel()).upload(faces, "faces", progress=False, policy=SizePolicy(size=32))
    try:
        yield served, held
    finally:
        held.release()
        served.running.stop(grace=5)  # the jobs still running end before the database closes
        anonymizer.stop(0)


@pytest.fixture(autouse=True)
def settled(coordinator):
    """After each test, whatever it left: previews let go until no operation of the tenant runs."""
    yield
    served, held = coordinator
    operations = OperationsClient(served.channel())
    deadline = time.monotonic() + 120
    while list(operations.list(filter="done = false")) and time.monotonic() < deadline:
        held.release()
        time.sleep(0.2)


def spec() -> js.ProtectionJobSpec:
    return js.ProtectionJobSpec(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                                protected_attributes=["gender"], kept_attributes=["age"], preview_size=2,
                                generator=GENERATOR, seed=7)


def stub(served) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(served.channel())


def create(served, job: str) -> str:
    return stub(served).CreateProtectionJob(js.CreateProtectionJobRequest(job_id=job, spec=spec(),
                                                                          request_id=f"create-{job}"),
                                            timeout=60).operation.name


def get(served, job: str) -> js.ProtectionJob:
    return stub(served).GetProtectionJob(js.GetProtectionJobRequest(name=f"jobs/{job}"), timeout=30).job


def preview_request(job: str) -> str:
    return derived_request_id("job", "acme", job, "round", 1)


def busy(served, held: HeldAnonymizer, prefix: str) -> list[str]:
    """Two jobs whose previews are held: both operation threads of the coordinator are taken."""
    jobs = [f"{prefix}-busy-{i}" for i in (1, 2)]
    for job in jobs:
        create(served, job)
    deadline = time.monotonic() + 60
    while not all(preview_request(job) in held.asked for job in jobs):
        assert time.monotonic() < deadline, "the busy jobs never asked for their preview"
        time.sleep(0.05)
    return jobs


def queued(served, job: str) -> str:
    operation = create(served, job)
    time.sleep(0.5)  # it would have started by now, had a thread been free
    assert get(served, job).state == js.ProtectionJob.STATE_PENDING
    return operation


def ended(served, operation: str):
    op = OperationsClient(served.channel()).wait(operation, timeout=60, poll_seconds=0.5)
    assert op.done, f"{operation} never ended"
    return op


def assert_never_ran(served, held: HeldAnonymizer, job: str, operation: str) -> None:
    op = ended(served, operation)
    assert op.error.code == code_pb2.CANCELLED, op.error
    assert progress_of(op).stage == "cancelled"
    job_now = get(served, job)
    assert job_now.state == js.ProtectionJob.STATE_CANCELLED
    assert job_now.operation == operation
    assert preview_request(job) not in held.asked  # no worker was called for it
    rounds = stub(served).ListFeedbackRounds(js.ListFeedbackRoundsRequest(parent=f"jobs/{job}"), timeout=30).rounds
    assert not rounds
    ledger = ledger_service_pb2_grpc.LedgerServiceStub(served.channel())
    entries = ledger.ListLedgerEntries(ledger_service_pb2.ListLedgerEntriesRequest(page_size=1000),
                                       timeout=30).entries
    assert not entries  # nothing reserved, nothing released: the held previews were never charged either


def run_cli(served, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("UMBRA_ENDPOINT", served.target)
    monkeypatch.setenv("UMBRA_API_KEY", served.credential)
    monkeypatch.setenv("UMBRA_CONFIG", "/nonexistent/umbra.toml")
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_umbra_jobs_cancel_ends_a_queued_job_cancelled_and_it_never_runs(coordinator, monkeypatch, capsys):
    served, held = coordinator
    blockers = busy(served, held, "cli")
    operation = queued(served, "cli-queued")

    code, said = run_cli(served, monkeypatch, capsys, "jobs", "cancel", "cli-queued")
    assert code == 0, said
    assert "cancelled" in said and "before it started" in said, said
    assert get(served, "cli-queued").state == js.ProtectionJob.STATE_CANCELLED  # at once, still queued

    held.release()  # the threads free up: the queued operation runs, finds the job cancelled, and ends
    assert_never_ran(served, held, "cli-queued", operation)
    for job in blockers:
        ended(served, get(served, job).operation)


def test_the_rpc_and_the_operations_cancel_of_a_queued_job_end_it_cancelled(coordinator):
    served, held = coordinator
    busy(served, held, "rpc")
    by_rpc, by_operation = queued(served, "rpc-queued"), queued(served, "op-queued")

    job = get(served, "op-queued")
    assert job.operation == by_operation  # known while it is queued, so that it can be cancelled
    OperationsClient(served.channel()).cancel(job.operation)  # AIP-151, as `umbra operations cancel` does
    assert get(served, "op-queued").state == js.ProtectionJob.STATE_CANCELLED
    answer = stub(served).CancelProtectionJob(js.CancelProtectionJobRequest(name="jobs/rpc-queued"), timeout=30)
    assert answer.job.state == js.ProtectionJob.STATE_CANCELLED and answer.job.operation == by_rpc

    held.release()
    assert_never_ran(served, held, "rpc-queued", by_rpc)
    assert_never_ran(served, held, "op-queued", by_operation)


def test_cancelling_a_finished_job_is_a_failed_precondition(coordinator, monkeypatch, capsys):
    served, held = coordinator
    blockers = busy(served, held, "done")
    held.release()
    failed = ended(served, get(served, blockers[0]).operation)  # the held preview was refused: the job failed
    assert failed.error.code == code_pb2.FAILED_PRECONDITION
    assert get(served, blockers[0]).state == js.ProtectionJob.STATE_FAILED

    with pytest.raises(grpc.RpcError) as refused:
        stub(served).CancelProtectionJob(js.CancelProtectionJobRequest(name=f"jobs/{blockers[0]}"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(refused.value)["reason"] == "JOB_FINISHED"
    assert "failed" in refused.value.details()
    code, said = run_cli(served, monkeypatch, capsys, "jobs", "cancel", blockers[0])
    assert code == 1 and "FAILED_PRECONDITION" in said and "failed" in said, said
    with pytest.raises(grpc.RpcError) as missing:
        stub(served).CancelProtectionJob(js.CancelProtectionJobRequest(name="jobs/no-such-job"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
