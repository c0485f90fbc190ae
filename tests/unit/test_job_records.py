"""A protection job's records: written before each side effect, answered once, and enough for a restarted
coordinator to find the next round."""

import pytest

from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.runtime.errors import FailedPrecondition, NotFound
from umbra.services.coordinator.db import CoordinatorDB
from umbra.services.coordinator.job_records import ANSWERED, AWAITING, PENDING, PREVIEWING, JobRecords, JobRow
from umbra.services.coordinator.protection import next_intensity


@pytest.fixture
def records(tmp_path):
    records = JobRecords(CoordinatorDB(tmp_path / "coordinator.sqlite3"))
    records.insert(JobRow("acme", "job-1", PENDING, "queued", js.ProtectionJobSpec().SerializeToString()), "r-1")
    return records


def test_a_job_is_recorded_once_per_request_id(records):
    again, same = records.insert(JobRow("acme", "job-1", PENDING, "queued", b""), "r-1")
    other, created = records.insert(JobRow("acme", "job-1", PENDING, "queued", b""), "r-2")
    assert same and not created and again.id == other.id == "job-1"
    assert records.update("acme", "job-1", outputs={"a": 1}).outputs == {"a": 1}
    assert records.update("acme", "job-1", outputs={"b": 2}, stage="x").outputs == {"a": 1, "b": 2}
    with pytest.raises(NotFound):
        records.update("acme", "nope", stage="x")


def test_a_round_is_answered_once_and_only_when_current_and_shown(records):
    records.open_round("acme", "job-1", 1, 0.5)
    assert records.open_round("acme", "job-1", 1, 0.9).intensity == 0.5  # a restart finds the first
    with pytest.raises(FailedPrecondition, match="still being made"):
        records.answer("acme", "job-1", 1, "more", [], "a-1")
    assert records.show("acme", "job-1", 1, {"cost": {}}).state == AWAITING
    answered, now = records.answer("acme", "job-1", 1, "more", [], "a-1")
    assert now and answered.state == ANSWERED
    retried, now = records.answer("acme", "job-1", 1, "more", [], "a-1")
    assert not now and retried.feedback == "more"
    with pytest.raises(FailedPrecondition, match="answered already"):
        records.answer("acme", "job-1", 1, "accept", [], "a-2")
    records.open_round("acme", "job-1", 2, 0.75)
    records.show("acme", "job-1", 2, {})
    with pytest.raises(NotFound):
        records.answer("acme", "job-1", 3, "more", [], "a-3")
    assert records.round("acme", "job-1", 2).state == AWAITING and records.round("acme", "job-2", 1) is None


def test_a_restart_between_an_answer_and_the_next_round_finds_the_next_intensity(records):
    spec = js.ProtectionJobSpec()
    for number, (intensity, answer) in enumerate([(0.5, "more"), (0.75, "less")], start=1):
        records.open_round("acme", "job-1", number, intensity)
        records.show("acme", "job-1", number, {})
        records.answer("acme", "job-1", number, answer, [], f"a-{number}")
    assert next_intensity(spec, records.rounds("acme", "job-1")) == 0.625
    records.open_round("acme", "job-1", 3, 0.625)
    assert records.round("acme", "job-1", 3).state == PREVIEWING
    assert next_intensity(js.ProtectionJobSpec(initial_intensity=0.2), records.rounds("acme", "job-1")) != 0.625
