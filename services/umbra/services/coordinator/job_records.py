"""Protection jobs and their feedback rounds in the coordinator's database.

A job's row says how far it got (`stage`) and what it made (`outputs`); a round's row says what was shown and
how the tenant answered. Each is written *before* the side effect it leads to (a preview, an anonymized
version), so a coordinator restarted at any moment finds where the job stood and repeats only idempotent calls
(every call to a worker carries a request_id derived from the job, the stage and the round).

    records = JobRecords(db)
    records.insert(JobRow(...), request_id)           # the job, once per request_id
    records.open_round(tenant, job, 1, 0.5)           # round 1, at intensity 0.5, awaiting its preview
    records.answer(tenant, job, 1, "more", [], rid)   # once per request_id; FailedPrecondition otherwise
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from umbra.runtime.errors import FailedPrecondition, NotFound
from umbra.services.coordinator.db import CoordinatorDB

# Job states (ProtectionJob.State) and round states.
PENDING, PREPARING, AWAITING_FEEDBACK, RUNNING = "PENDING", "PREPARING", "AWAITING_FEEDBACK", "RUNNING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
PREVIEWING, AWAITING, ANSWERED = "PREVIEWING", "AWAITING", "ANSWERED"
ANSWERS = ("accept", "more", "less")


@dataclass(frozen=True)
class JobRow:
    tenant: str
    id: str
    state: str
    stage: str
    spec: bytes  # the ProtectionJobSpec, serialized
    operation: str = ""
    outputs: dict = field(default_factory=dict)
    error: str = ""
    create_time: float = 0.0
    update_time: float = 0.0


@dataclass(frozen=True)
class RoundRow:
    tenant: str
    job: str
    round: int
    intensity: float
    state: str  # PREVIEWING (the preview is being made) | AWAITING (the tenant's answer) | ANSWERED
    feedback: str = ""  # one of ANSWERS once answered
    flagged: list[str] = field(default_factory=list)
    preview: dict = field(default_factory=dict)  # what was shown: keys, object keys, cost, risk
    create_time: float = 0.0
    answer_time: float | None = None


class JobRecords:
    def __init__(self, db: CoordinatorDB):
        self.db = db  # its schema (migrations/) holds the jobs and job_rounds tables

    # -- jobs -------------------------------------------------------------------------------------------------

    def insert(self, row: JobRow, request_id: str) -> tuple[JobRow, bool]:
        """(the row, True) when made now; (the existing row, False) when the same request_id made it.
        FailedPrecondition-free: a different request for an id that is taken raises AlreadyExists upstream."""
        with self.db.transaction() as sql:
            found = sql.execute("SELECT request_id FROM jobs WHERE tenant = ? AND id = ?", (row.tenant, row.id)
                                ).fetchone()
            if found is not None:
                return self.job(row.tenant, row.id), bool(request_id) and found[0] == request_id
            now = time.time()
            sql.execute("INSERT INTO jobs (tenant, id, state, stage, spec, operation, request_id, create_time, "
                        "update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (row.tenant, row.id, row.state, row.stage, row.spec, row.operation, request_id or None,
                         now, now))
        return self.job(row.tenant, row.id), True

    _JOB = "SELECT tenant, id, state, stage, spec, operation, outputs, error, create_time, update_time FROM jobs "

    @staticmethod
    def _job(row) -> JobRow:
        tenant, id_, state, stage, spec, operation, outputs, error, created, updated = row
        return JobRow(tenant, id_, state, stage, bytes(spec), operation, json.loads(outputs), error, created, updated)

    def job(self, tenant: str, job: str) -> JobRow | None:
        row = self.db.fetch_one(self._JOB + "WHERE tenant = ? AND id = ?", (tenant, job))
        return self._job(row) if row else None

    def jobs(self, tenant: str, after: str, limit: int) -> list[JobRow]:
        return [self._job(r) for r in self.db.fetch_all(self._JOB + "WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?",
                                                         (tenant, after, limit))]

    def unfinished(self) -> list[tuple[JobRow, str]]:
        """(job, the request_id that created it) of every job not succeeded, failed or cancelled, of every tenant."""
        marks = ", ".join("?" for _ in FINISHED)
        rows = self.db.fetch_all(f"SELECT tenant, id, request_id FROM jobs WHERE state NOT IN ({marks})", FINISHED)
        return [(self.job(tenant, job), request_id or "") for tenant, job, request_id in rows]

    def update(self, tenant: str, job: str, *, outputs: dict | None = None, **fields) -> JobRow:
        """Sets fields of a job (state, stage, operation, error) and merges `outputs` into its outputs."""
        with self.db.transaction() as sql:
            current = sql.execute("SELECT outputs FROM jobs WHERE tenant = ? AND id = ?", (tenant, job)).fetchone()
            if current is None:
                raise NotFound("job", f"jobs/{job}")
            merged = json.loads(current[0]) | (outputs or {})
            assignments = "".join(f", {name} = ?" for name in fields)
            sql.execute(f"UPDATE jobs SET outputs = ?, update_time = ?{assignments} WHERE tenant = ? AND id = ?",
                        (json.dumps(merged), time.time(), *fields.values(), tenant, job))
        return self.job(tenant, job)

    def transition(self, tenant: str, job: str, expect: str, **fields) -> bool:
        """Sets fields of the job (state, stage, error) only while it is in state `expect`, in one statement: of a
        cancel and the job's start, exactly one wins. False when the job was not in `expect`."""
        assignments = "".join(f", {name} = ?" for name in fields)
        with self.db.transaction() as sql:
            cursor = sql.execute(f"UPDATE jobs SET update_time = ?{assignments} WHERE tenant = ? AND id = ? "
                                 "AND state = ?", (time.time(), *fields.values(), tenant, job, expect))
            return cursor.rowcount == 1

    def request_cancel(self, tenant: str, job: str) -> None:
        """Marks the job as cancelled by its tenant, for the replica that drives it (which may be another one: it
        cancels the job's operation at its next lease heartbeat, JobLeases.cancel_requested)."""
        with self.db.transaction() as sql:
            sql.execute("UPDATE jobs SET cancel_requested = 1, update_time = ? WHERE tenant = ? AND id = ?",
                        (time.time(), tenant, job))

    def cancel_requested(self, tenant: str, job: str) -> bool:
        row = self.db.fetch_one("SELECT cancel_requested FROM jobs WHERE tenant = ? AND id = ?", (tenant, job))
        return bool(row and row[0])

    # -- rounds -----------------------------------------------------------------------------------------------

    _ROUND = ("SELECT tenant, job, round, intensity, state, feedback, flagged, preview, create_time, answer_time "
              "FROM job_rounds ")

    @staticmethod
    def _round(row) -> RoundRow:
        tenant, job, number, intensity, state, feedback, flagged, preview, created, answered = row
        return RoundRow(tenant, job, number, intensity, state, feedback, json.loads(flagged), json.loads(preview),
                        created, answered)

    def round(self, tenant: str, job: str, number: int) -> RoundRow | None:
        row = self.db.fetch_one(self._ROUND + "WHERE tenant = ? AND job = ? AND round = ?", (tenant, job, number))
        return self._round(row) if row else None

    def rounds(self, tenant: str, job: str, after: int = 0, limit: int = 1_000_000) -> list[RoundRow]:
        return [self._round(r) for r in self.db.fetch_all(
            self._ROUND + "WHERE tenant = ? AND job = ? AND round > ? ORDER BY round LIMIT ?",
            (tenant, job, after, limit))]

    def open_round(self, tenant: str, job: str, number: int, intensity: float) -> RoundRow:
        """Round `number` at `intensity`, PREVIEWING; the existing one when it was opened before (a restart)."""
        with self.db.transaction() as sql:
            sql.execute("INSERT INTO job_rounds (tenant, job, round, intensity, state, create_time) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (tenant, job, number, intensity, PREVIEWING, time.time()))
        return self.round(tenant, job, number)

    def show(self, tenant: str, job: str, number: int, preview: dict) -> RoundRow:
        """Records the preview of a round, which then awaits the tenant's answer."""
        with self.db.transaction() as sql:
            sql.execute("UPDATE job_rounds SET preview = ?, state = ? WHERE tenant = ? AND job = ? AND round = ? "
                        "AND state = ?", (json.dumps(preview), AWAITING, tenant, job, number, PREVIEWING))
        return self.round(tenant, job, number)

    def answer(self, tenant: str, job: str, number: int, feedback: str, flagged: list[str],
               request_id: str) -> tuple[RoundRow, bool]:
        """Records the tenant's answer to round `number`, which must be the job's current round and await it.
        (row, True) when answered now; (row, False) when the same request_id answered it before."""
        if feedback not in ANSWERS:
            raise ValueError(f"feedback {feedback!r} is not one of {ANSWERS}")
        with self.db.transaction() as sql:
            row = sql.execute("SELECT state, request_id FROM job_rounds WHERE tenant = ? AND job = ? AND round = ?",
                              (tenant, job, number)).fetchone()
            if row is None:
                raise NotFound("round", f"jobs/{job}/rounds/{number}")
            state, answered_by = row
            if state == ANSWERED:
                if request_id and answered_by == request_id:
                    return self.round(tenant, job, number), False
                raise FailedPrecondition(f"round {number} of job {job} was answered already",
                                         reason="ROUND_NOT_CURRENT")
            latest = sql.execute("SELECT MAX(round) FROM job_rounds WHERE tenant = ? AND job = ?",
                                 (tenant, job)).fetchone()[0]
            if number != latest:
                raise FailedPrecondition(f"round {number} is not the current round of job {job} ({latest} is)",
                                         reason="ROUND_NOT_CURRENT")
            if state != AWAITING:
                raise FailedPrecondition(f"round {number}'s preview is still being made; answer it once it is "
                                         "shown", reason="ROUND_NOT_READY")
            sql.execute("UPDATE job_rounds SET state = ?, feedback = ?, flagged = ?, request_id = ?, answer_time = ? "
                        "WHERE tenant = ? AND job = ? AND round = ?",
                        (ANSWERED, feedback, json.dumps(flagged), request_id or None, time.time(), tenant, job,
                         number))
        return self.round(tenant, job, number), True
