"""Job leases (umbra.services.coordinator.job_leases) on a real PostgreSQL server and on SQLite: two replicas can
never both hold one lease, an expired lease is taken over, and its old holder learns it lost it."""

from __future__ import annotations

import threading
import time

import pytest

from umbra.services.coordinator.db import CoordinatorDB
from umbra.services.coordinator.job_leases import JobLeases
from umbra.services.coordinator.job_records import JobRecords, JobRow

pytestmark = pytest.mark.slow


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request, tmp_path):
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        database = CoordinatorDB(server.database("job_leases"))
    else:
        database = CoordinatorDB(tmp_path / "coordinator.sqlite3")
    JobRecords(database).insert(JobRow("acme", "job-1", "PREPARING", "preparing", b"spec"), "r1")
    yield database
    database.close()


def test_of_sixteen_replicas_racing_for_one_lease_exactly_one_holds_it(db):
    replicas = [JobLeases(db, seconds=30, holder=f"replica-{i}") for i in range(16)]
    start, won = threading.Barrier(16), []

    def race(leases: JobLeases) -> None:
        start.wait()
        if leases.acquire("acme", "job-1"):
            won.append(leases.holder)

    threads = [threading.Thread(target=race, args=(r,)) for r in replicas]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(won) == 1
    assert [r.holds("acme", "job-1") for r in replicas].count(True) == 1
    assert not any(r.acquire("acme", "job-1") for r in replicas if r.holder != won[0])  # still live: refused


def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it_lost_it(db):
    a, b = JobLeases(db, seconds=0.5, holder="a"), JobLeases(db, seconds=0.5, holder="b")
    assert a.acquire("acme", "job-1") and not b.acquire("acme", "job-1")
    assert a.renew() == set() and b.expired() == []  # a beats: still a's
    time.sleep(0.7)  # a stops beating
    assert b.expired() == [("acme", "job-1")]
    assert b.acquire("acme", "job-1")
    assert a.renew() == {("acme", "job-1")} and not a.holds("acme", "job-1")
    assert b.holds("acme", "job-1")
    b.release("acme", "job-1")
    assert a.acquire("acme", "job-1")  # free again


def test_the_sweep_runs_on_one_replica_at_a_time(db):
    """DatasetLocks.only_one: of two replicas (two connection pools on one database), one takes the sweep and the
    other skips it until the first is done; on SQLite, one process, the sweep is always its own."""
    from umbra.services.coordinator.locks import DatasetLocks

    if not db.postgres:
        with DatasetLocks(None).only_one("sweep") as mine:
            assert mine
        return
    other = CoordinatorDB(db.sql.engine.url.render_as_string(hide_password=False))
    try:
        a, b = DatasetLocks(db.sql), DatasetLocks(other.sql)
        with a.only_one("sweep") as first:
            with b.only_one("sweep") as second:
                assert (first, second) == (True, False)
            with a.only_one("another task") as unrelated:
                assert unrelated
        with b.only_one("sweep") as after:
            assert after  # released when the first replica's sweep ended
    finally:
        other.close()
