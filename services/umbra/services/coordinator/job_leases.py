"""Who drives a protection job: a lease in the job's row (holder, expiry), so that one replica at a time runs it.

    leases = JobLeases(db, seconds=15)
    if leases.acquire("acme", "job-1"):   # free, expired, or already ours: ours now, until now + 15 s
        ...drive the job...
    leases.renew()                        # the heartbeat (every seconds / 3): the jobs we lost, if any
    leases.expired()                      # unfinished jobs whose holder stopped renewing: another replica's to take
    leases.cancel_requested()             # jobs we drive that a tenant cancelled, on whichever replica

Acquiring is one conditional UPDATE (`WHERE holder is us OR the lease is free or expired`), so two replicas can
never both hold one lease: the database applies one UPDATE after the other, and the second finds the first's lease
live. A holder that stops renewing (killed, stuck, cut off from the database) loses the job once the expiry
passes; every step of a job is idempotent (request ids derived from the job, its stage and its round), so the
replica that takes it over carries on where the job's rows say it stood, charging and writing nothing twice.

Times are the replicas' clocks: keep them synchronized (NTP) to well within the lease time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from umbra.services.coordinator.db import CoordinatorDB
from umbra.services.coordinator.job_records import FINISHED

log = logging.getLogger(__name__)


class JobLeases:
    def __init__(self, db: CoordinatorDB, *, seconds: float, holder: str = ""):
        if not seconds > 0:
            raise ValueError("seconds: a lease must last more than 0 s")
        self.db, self.seconds = db, seconds
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def acquire(self, tenant: str, job: str) -> bool:
        """Makes the lease ours (renewed to now + seconds) when it is free, expired or ours already."""
        now = time.time()
        with self.db.transaction() as sql:
            taken = sql.execute(
                "UPDATE jobs SET lease_holder = ?, lease_expiry = ? WHERE tenant = ? AND id = ? "
                "AND (lease_holder = ? OR lease_holder = '' OR lease_expiry < ?)",
                (self.holder, now + self.seconds, tenant, job, self.holder, now)).rowcount == 1
        with self._lock:
            (self._held.add if taken else self._held.discard)((tenant, job))
        return taken

    def release(self, tenant: str, job: str) -> None:
        """Gives the lease up (the job finished, or this replica stops driving it)."""
        with self._lock:
            self._held.discard((tenant, job))
        with self.db.transaction() as sql:
            sql.execute("UPDATE jobs SET lease_holder = '', lease_expiry = 0 WHERE tenant = ? AND id = ? "
                        "AND lease_holder = ?", (tenant, job, self.holder))

    def holds(self, tenant: str, job: str) -> bool:
        row = self.db.fetch_one("SELECT lease_holder, lease_expiry FROM jobs WHERE tenant = ? AND id = ?",
                                (tenant, job))
        return row is not None and row[0] == self.holder and row[1] >= time.time()

    def renew(self) -> set[tuple[str, str]]:
        """Extends every lease this replica holds; returns the jobs whose lease it no longer holds (another
        replica took them over after ours expired), which it must stop driving."""
        now = time.time()
        with self._lock:
            held = set(self._held)
        if not held:
            return set()
        marks = ", ".join("?" for _ in FINISHED)
        with self.db.transaction() as sql:
            sql.execute(f"UPDATE jobs SET lease_expiry = ? WHERE lease_holder = ? AND lease_expiry >= ? "
                        f"AND state NOT IN ({marks})", (now + self.seconds, self.holder, now, *FINISHED))
            ours = {(t, j) for t, j in sql.execute("SELECT tenant, id FROM jobs WHERE lease_holder = ? "
                                                   "AND lease_expiry >= ?", (self.holder, now)).fetchall()}
        lost = held - ours
        with self._lock:
            self._held -= lost
        for tenant, job in sorted(lost):
            log.warning("lost the lease of job %s of tenant %s (finished, or taken over)", job, tenant)
        return lost

    def expired(self) -> list[tuple[str, str]]:
        """(tenant, job) of unfinished jobs whose lease was held and has expired: their holder stopped."""
        marks = ", ".join("?" for _ in FINISHED)
        rows = self.db.fetch_all(f"SELECT tenant, id FROM jobs WHERE lease_holder <> '' AND lease_expiry < ? "
                                 f"AND state NOT IN ({marks}) ORDER BY update_time", (time.time(), *FINISHED))
        return [(tenant, job) for tenant, job in rows]

    def cancel_requested(self) -> list[tuple[str, str]]:
        """(tenant, job) of the unfinished jobs this replica drives whose cancel was asked for (on any replica)."""
        marks = ", ".join("?" for _ in FINISHED)
        rows = self.db.fetch_all(f"SELECT tenant, id FROM jobs WHERE lease_holder = ? AND cancel_requested = 1 "
                                 f"AND state NOT IN ({marks})", (self.holder, *FINISHED))
        return [(tenant, job) for tenant, job in rows]

    def forget_all(self) -> int:
        """Frees every lease (SQLite at start: the file is this process's alone, so any lease is a dead one's)."""
        with self.db.transaction() as sql:
            return sql.execute("UPDATE jobs SET lease_holder = '', lease_expiry = 0 WHERE lease_holder <> ''"
                               ).rowcount


def start_heartbeat(leases: JobLeases, stop: threading.Event, *, on_lost, on_expired,
                    on_cancel=None) -> threading.Thread:
    """Renews this replica's leases every seconds / 3, calls `on_lost(tenant, job)` for each one lost,
    `on_expired(tenant, job)` for each job whose holder stopped (to take it over), and `on_cancel(tenant, job)` for
    each job it drives whose cancel was asked for on another replica."""
    def loop() -> None:
        while not stop.wait(leases.seconds / 3):
            try:
                for tenant, job in leases.renew():
                    on_lost(tenant, job)
                for tenant, job in leases.expired():
                    on_expired(tenant, job)
                for tenant, job in (leases.cancel_requested() if on_cancel else []):
                    on_cancel(tenant, job)
            except Exception:  # noqa: BLE001 - the database may be restarting: the next beat tries again
                log.warning("the job lease heartbeat failed; retrying", exc_info=True)

    thread = threading.Thread(target=loop, name="job-leases", daemon=True)
    thread.start()
    return thread
