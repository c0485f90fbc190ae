"""Issue 26: a worker that restarts is waited for, within a bound (UMBRA_WORKER_WAIT_SECONDS), and the job goes on.
The only anonymizer is SIGKILLed while the job anonymizes the dataset and is back 3 s later: the job succeeds,
charged once per round and once for the dataset, with one anonymized version. With no anonymizer coming back, the
job fails once the wait is over, and says that it waited."""

from __future__ import annotations

import time

import pytest

from e2e.jobkit import Stack, Tenant, check_charges, check_versions, kill, review, write_generator
from support import serve_process
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FACES = 300  # two output shards: the anonymizer is seen at work before it ends
SCRIPT = ("accept",)  # one round: the dataset is what the test is about


class PatientStack(Stack):
    """Stack with one anonymizer, and a coordinator that waits `wait_seconds` for a worker that cannot be reached."""

    def __init__(self, home, wait_seconds: float):
        super().__init__(home, replicas=1)
        self.wait_seconds = wait_seconds

    def start_coordinator(self) -> None:
        self.coordinator = serve_process(
            "coordinator", self.home, self.coordinator_port, UMBRA_GRACE_SECONDS="2",
            UMBRA_ANONYMIZER_URLS=",".join(f"127.0.0.1:{p}" for p in self.anonymizer_ports),
            UMBRA_WORKER_WAIT_SECONDS=str(self.wait_seconds))


def running_dataset_operation(stack: Stack, tenant: str, timeout: float = 300) -> None:
    """Waits until the anonymizer's AnonymizeDataset operation has anonymized some images."""
    from umbra.client.operations import progress_of

    operations = stack.anonymizer_operations(0, tenant)
    deadline = time.monotonic() + timeout
    while not any(not op.done and (p := progress_of(op)) is not None and p.stage == "anonymizing" and p.done > 0
                  for op in operations.list()):
        assert time.monotonic() < deadline, "the anonymizer never started anonymizing"
        time.sleep(0.05)


def job_until_anonymizing(stack: Stack, tmp_path, name: str) -> tuple[Tenant, str]:
    tenant = Tenant.create(stack.target, name)
    assert tenant.upload(tmp_path / "faces", FACES).sample_count == FACES
    write_generator(LocalObjectStore(stack.objects), f"umbra-{name}")
    operation = tenant.create_job("protect")
    review(tenant, "protect", SCRIPT)
    tenant.wait_for_stage(operation, ("anonymizing the dataset",))
    running_dataset_operation(stack, name)
    return tenant, operation


def test_a_job_survives_its_only_anonymizers_restart(tmp_path):
    (tmp_path / "home").mkdir()
    stack = PatientStack(tmp_path / "home", wait_seconds=120).start()
    try:
        tenant, operation = job_until_anonymizing(stack, tmp_path, "acme")
        kill(stack.anonymizers[0])
        time.sleep(3)
        stack.start_anonymizer(0)
        done = tenant.result(operation)
        assert done.state == js.ProtectionJob.STATE_SUCCEEDED, tenant.job("protect")
        check_charges(tenant, "protect", len(SCRIPT), version=2)
        check_versions(tenant, done, FACES)
    finally:
        stack.close()


def test_a_worker_that_does_not_come_back_fails_the_job_once_the_wait_is_over(tmp_path):
    (tmp_path / "home").mkdir()
    stack = PatientStack(tmp_path / "home", wait_seconds=4).start()
    try:
        tenant = Tenant.create(stack.target, "acme")
        assert tenant.upload(tmp_path / "faces", 60).sample_count == 60
        write_generator(LocalObjectStore(stack.objects), "umbra-acme")
        kill(stack.anonymizers[0])  # gone for good: the first preview finds no anonymizer
        started = time.monotonic()
        operation = tenant.create_job("protect")
        done = tenant.operations.wait(operation, timeout=120, poll_seconds=0.5)
        assert done.done and tenant.job("protect").state == js.ProtectionJob.STATE_FAILED
        assert "waited 4 s for the anonymizer" in done.error.message, done.error.message
        assert time.monotonic() - started >= 4
    finally:
        stack.close()
