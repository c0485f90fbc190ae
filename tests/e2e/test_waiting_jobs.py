"""Issue 26's starvation case: one tenant's 12 protection jobs waiting for feedback leave another tenant's upload
and job starting within seconds. A job waiting for its reviewer holds no slot of the coordinator's operation pool
(it used to hold a thread each: the other tenant's upload then stayed queued for minutes), and cancelling the 12
ends them at once. Services as their own processes with their default pool sizes (e2e.jobkit)."""

from __future__ import annotations

import time

import pytest

from e2e.jobkit import RESERVED, Stack, Tenant, write_generator
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
WAITING = 12
FACES = 48


def test_twelve_jobs_waiting_for_feedback_leave_another_tenants_upload_and_job_starting_within_seconds(tmp_path):
    stack = Stack(tmp_path / "home")
    stack.home.mkdir()
    stack.start()
    try:
        store = LocalObjectStore(stack.objects)
        acme = Tenant.create(stack.target, "acme")
        acme.upload(tmp_path / "acme", FACES)
        write_generator(store, "umbra-acme")
        for i in range(WAITING):
            acme.create_job(f"waiting-{i}")
        for i in range(WAITING):
            acme.preview(f"waiting-{i}", 1)
        assert {acme.job(f"waiting-{i}").state for i in range(WAITING)} == {js.ProtectionJob.STATE_AWAITING_FEEDBACK}

        globex = Tenant.create(stack.target, "globex")
        began = time.monotonic()
        assert globex.upload(tmp_path / "globex", FACES, seed=9).sample_count == FACES
        uploaded = time.monotonic() - began
        write_generator(store, "umbra-globex")
        began = time.monotonic()
        globex.create_job("mine")
        globex.preview("mine", 1, timeout=120)
        previewed = time.monotonic() - began
        print(f"with {WAITING} of acme's jobs awaiting feedback: globex's upload took {uploaded:.1f} s, its job's "
              f"first preview {previewed:.1f} s")
        assert uploaded < 30 and previewed < 60, (uploaded, previewed)

        began = time.monotonic()
        for i in range(WAITING):
            acme.jobs.CancelProtectionJob(js.CancelProtectionJobRequest(name=f"jobs/waiting-{i}"), timeout=30)
        while {acme.job(f"waiting-{i}").state for i in range(WAITING)} != {js.ProtectionJob.STATE_CANCELLED}:
            assert time.monotonic() - began < 60, "acme's cancelled jobs did not all end"
            time.sleep(0.2)
        assert not [e.request_id for e in acme.ledger() if e.state == RESERVED]
        assert globex.job("mine").state == js.ProtectionJob.STATE_AWAITING_FEEDBACK
    finally:
        stack.close()
