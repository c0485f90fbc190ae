"""Cancelling a protection job's operation (google.longrunning CancelOperation, through umbra.client.operations)
in each stage ends the job CANCELLED and leaves no reserved privacy charge: a generator the job was training has
its operation cancelled and its charge released, a preview that was being made is settled by the anonymizer, a
dataset being anonymized has its workers' operations cancelled, its charge released and its uncommitted version
deleted. Every service is `umbra serve` in its own process; each test is its own tenant."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import code_pb2

from e2e.jobkit import RESERVED, Stack, Tenant, preview_charge, review, write_generator
from support import status_details
from umbra.client.errors import OperationFailed
from umbra.common.v1 import privacy_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.storage import keys
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
FACES = 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("cancel"), replicas=1)
    try:
        yield stack.start()
    finally:
        stack.close()


def settled(stack: Stack, tenant: Tenant, timeout: float = 120) -> list:
    """The tenant's ledger once nothing is reserved and no anonymizer operation of its runs (a cancelled worker
    releases its charge when its operation ends, shortly after the job's)."""
    deadline = time.monotonic() + timeout
    while True:
        running = [op for op in stack.anonymizer_operations(0, tenant.name).list() if not op.done]
        entries = tenant.ledger()
        reserved = [e.request_id for e in entries if e.state == RESERVED]
        if not running and not reserved:
            return entries
        assert time.monotonic() < deadline, f"still running {[op.name for op in running]}, reserved {reserved}"
        time.sleep(0.5)


@pytest.mark.parametrize("when", ["preparing", "awaiting", "previewing", "running"])
def test_a_cancelled_job_ends_cancelled_and_leaves_nothing_reserved(stack, tmp_path, when):
    name = f"c-{when}"
    tenant = Tenant.create(stack.target, name)
    tenant.upload(tmp_path / "faces", FACES)
    store = LocalObjectStore(stack.objects)
    job = "protect-faces"
    if when == "preparing":  # no generator anywhere: the job trains one
        operation = tenant.create_job(job, generator=None)
    else:
        write_generator(store, f"umbra-{name}")
        operation = tenant.create_job(job)

    if when == "preparing":
        tenant.wait_for_stage(operation, ("training the generator: ",))
    elif when == "awaiting":
        tenant.preview(job, 1)
        tenant.wait_for_stage(operation, ("round 1: awaiting feedback",))
    elif when == "previewing":
        tenant.wait_for_stage(operation, ("round 1: previewing",))
    else:
        review(tenant, job)
        tenant.wait_for_stage(operation, ("anonymizing the dataset",))
    tenant.operations.cancel(operation)

    with pytest.raises(OperationFailed) as failed:
        tenant.result(operation, timeout=300)
    assert failed.value.code == code_pb2.CANCELLED
    assert tenant.job(job).state == js.ProtectionJob.STATE_CANCELLED
    entries = settled(stack, tenant)
    rounds = tenant.rounds(job)
    charged = {e.request_id: e.state for e in entries}
    for r in rounds:  # a round whose preview was made is charged once, committed; nothing else was charged
        number = int(r.name.rsplit("/", 1)[1])
        if r.HasField("privacy_cost"):
            assert charged.pop(preview_charge(name, job, number)) == privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED
    released = {k: v for k, v in charged.items() if "/AnonymizeDataset/" in k or "/TrainGenerator/" in k}
    assert set(released.values()) <= {privacy_pb2.PRIVACY_CHARGE_STATE_RELEASED}, released
    assert not set(charged) - set(released), charged
    if when == "preparing":  # the generator's charge was reserved, then released; no round was opened
        assert not rounds and [k for k in released if "/TrainGenerator/" in k], charged
    if when == "running":
        assert len(rounds) == 3 and released  # the dataset's charge was reserved, then released
    # nothing anonymized was committed, and the version the job reserved was deleted, its objects with it
    assert [(v.name, v.state) for v in tenant.versions()] == [
        ("datasets/faces/versions/1", cds.DatasetVersion.STATE_COMMITTED)]
    assert not list(store.list(f"umbra-{name}", keys.version_prefix("faces", 2)))
    with pytest.raises(grpc.RpcError) as refused:  # a cancelled job has no report
        tenant.jobs.GetReport(js.GetReportRequest(job=f"jobs/{job}"), timeout=30)
    assert status_details(refused.value).get("reason") == "REPORT_NOT_READY"
