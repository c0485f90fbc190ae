"""JobService: the tenant's protection jobs, their feedback rounds and reports. The job itself runs in
protection.py; this servicer validates, converts and answers.

A job is cancelled in any state that is not final: `CancelProtectionJob`, or CancelOperation on the job's
operation (recorded on the job as soon as the operation exists, so a queued job has one too). A job still queued
(PENDING) ends CANCELLED at once and never starts; a job under way stops at its operation's next check."""

from __future__ import annotations

import logging
import time
import uuid

from umbra.common.v1 import image_pb2, refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc
from umbra.privacy.ledger import PrivacyLedger
from umbra.privacy.mechanisms import Cost
from umbra.runtime import auth, names, pagination
from umbra.runtime.errors import BudgetExhausted, FailedPrecondition, InvalidInput, NotFound, Unavailable
from umbra.runtime.operations import LongRunning, OperationRunner
from umbra.runtime.operations.runner import interrupted
from umbra.runtime.sql import DatabaseUnavailable
from umbra.services import convert as shared_convert
from umbra.services.coordinator.convert import criterion_to_proto
from umbra.services.coordinator.job_leases import JobLeases
from umbra.services.coordinator.job_records import ANSWERED, AWAITING, FINISHED, PENDING, JobRecords, JobRow, RoundRow
from umbra.services.coordinator.protection import ANSWERS, Plan, ProtectionJobs, cancel_queued, plan
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader

log = logging.getLogger(__name__)
_ENDED = {"SUCCEEDED": "succeeded", "FAILED": "failed", "CANCELLED": "was cancelled already"}
_FEEDBACK = {"accept": js.FEEDBACK_ACCEPT, "more": js.FEEDBACK_MORE_PRIVACY, "less": js.FEEDBACK_LESS_PRIVACY}
MAX_FLAGGED = 16


def _tenant() -> str:
    return auth.require_tenant("jobs belong to a tenant: call with a tenant API key")


def _round_name(name: str, field: str) -> tuple[str, int]:
    parts = name.split("/")
    if (len(parts) != 4 or parts[0] != "jobs" or parts[2] != "rounds" or not parts[3].isascii()
            or not parts[3].isdigit() or len(parts[3]) > 6 or int(parts[3]) < 1):
        raise InvalidInput(field, "must look like 'jobs/{job}/rounds/{round}' with a round of 1 or more")
    return names.validate_resource_id(parts[1], field), int(parts[3])


def _job_name(name: str, field: str) -> str:
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "jobs":
        raise InvalidInput(field, "must look like 'jobs/{job}'")
    return names.validate_resource_id(parts[1], field)


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, records: JobRecords, jobs: ProtectionJobs, store: ObjectStore, ledger: PrivacyLedger,
                 operations: OperationRunner, leases: JobLeases):
        self.records, self.jobs, self.store, self.ledger = records, jobs, store, ledger
        self.operations, self.leases = operations, leases
        self._create = LongRunning(operations, "CreateProtectionJob", js.CreateProtectionJobRequest,
                                   js.ProtectionJobMetadata, plan=self._plan, run=self._run)

    def resume_interrupted(self) -> int:
        """At start: carries on the jobs whose operation a previous stop of the coordinator interrupted (a job
        killed outright resumes with its operation; umbra.runtime.operations). Returns how many."""
        resumed = 0
        for row, request_id in self.records.unfinished():
            record = self.operations.store.get(row.operation) if row.operation else None
            if record is None or not interrupted(record.operation) or not request_id:
                continue
            resumed += self._carry_on(row, request_id)
        return resumed

    def take_over(self, tenant: str, job: str) -> bool:
        """Carries on a job whose lease expired (its replica stopped renewing it): the lease heartbeat's call."""
        found = self.records.db.fetch_one("SELECT request_id FROM jobs WHERE tenant = ? AND id = ?", (tenant, job))
        row = self.records.job(tenant, job)
        if row is None or row.state in FINISHED or not found or not found[0]:
            return False
        if not self._carry_on(row, found[0]):
            return False
        log.info("took over job %s of tenant %s (its lease had expired)", job, tenant)
        return True

    def _carry_on(self, row: JobRow, request_id: str) -> bool:
        """Starts the job's operation again here (the same request_id) once this replica holds its lease."""
        if not self.leases.acquire(row.tenant, row.id):
            return False  # another replica drives it
        try:
            self._start(row.tenant, js.CreateProtectionJobRequest(
                job_id=row.id, spec=js.ProtectionJobSpec.FromString(row.spec), request_id=request_id))
            if self.records.cancel_requested(row.tenant, row.id):  # cancelled while no replica drove it
                self.cancel_here(row.tenant, row.id)
            return True
        except Exception:  # noqa: BLE001 - one job that cannot go on must not stop the coordinator
            log.exception("job %s of tenant %s could not carry on", row.id, row.tenant)
            self.leases.release(row.tenant, row.id)
            return False

    def _plan(self, tenant: str, request: js.CreateProtectionJobRequest) -> Plan:
        if self.records.job(tenant, request.job_id) is None:  # a new job (not one carried on after a restart)
            left = self.ledger.balance(tenant).remaining
            if left.epsilon <= 0 or left.delta <= 0:
                raise BudgetExhausted(f"the tenant's privacy budget is spent (ε={left.epsilon:.6g}, δ={left.delta:.3g} "
                                      "left): a job could not pay for one preview",
                                      metadata={"remaining_epsilon": repr(left.epsilon),
                                                "remaining_delta": repr(left.delta)})
        return plan(self.records, self.jobs.db, self.store, tenant, request)

    def _run(self, ctx, planned: Plan) -> js.ProtectionJob:
        """Drives the job while this replica holds its lease; waits for the lease while another replica's is
        live (a restarted replica whose old lease has not expired yet, or a job taken over meanwhile)."""
        tenant, job = planned.tenant, planned.job
        if not self.leases.acquire(tenant, job):
            ctx.report(stage="waiting for another coordinator replica's lease on the job to expire")
            with ctx.waiting():  # costs no slot of the pool meanwhile
                while not self.leases.acquire(tenant, job):
                    row = self.records.job(tenant, job)
                    if row is not None and row.state in FINISHED:  # the replica that drove it finished it
                        return self.jobs.to_proto(row)
                    ctx.check_cancelled()
                    time.sleep(min(1.0, self.leases.seconds / 3))
        try:
            while True:
                try:
                    return self.jobs.run(ctx, planned)
                except DatabaseUnavailable:
                    # The database went away in the middle of a step: the job's state is in it, and every step is
                    # idempotent, so wait for it and run the job on from where its rows say it stands.
                    log.warning("job %s of tenant %s: the database cannot be reached; waiting for it", job, tenant)
                    self._await_database(ctx, tenant, job)
        finally:
            row = self.records.job(tenant, job)
            if row is None or row.state in FINISHED:
                self.leases.release(tenant, job)
            # else this replica is stopping: the lease expires once its heartbeat stops, and another replica (or
            # this one, restarted) carries the job on

    def _await_database(self, ctx, tenant: str, job: str, poll: float = 2.0) -> None:
        """Returns once the database answers and this replica holds the job's lease again (its lease may have
        expired meanwhile). Raises Unavailable when another replica took the job over: that one drives it now."""
        ctx.report(stage="waiting for the coordinator's database")
        with ctx.waiting():  # holds no slot of the pool meanwhile
            while True:
                ctx.check_cancelled()
                time.sleep(poll)
                try:
                    if self.leases.acquire(tenant, job):
                        log.info("job %s of tenant %s: the database is back; carrying on", job, tenant)
                        return
                except DatabaseUnavailable:
                    continue
                raise Unavailable(f"job {job} is driven by another coordinator replica now (this one lost its "
                                  "lease while the database could not be reached)")

    def _start(self, tenant: str, request: js.CreateProtectionJobRequest):
        """Starts (or finds) the job's operation and records it on the job at once: a job whose operation waits
        in the queue for a thread can be cancelled by its name too."""
        op = self._create.start(tenant, request)
        if not op.done:
            self.leases.acquire(tenant, request.job_id)  # held from the queue on: a dead replica's queued job is
            # taken over too
            row = self.records.job(tenant, request.job_id)
            if row is not None and row.operation != op.name:
                self.records.update(tenant, request.job_id, operation=op.name)
        return op

    def _settled(self, row: JobRow) -> JobRow:
        """A queued job whose operation was cancelled (CancelOperation, which the job does not see until its
        operation gets a thread) is CANCELLED now; any other job as it is."""
        if row.state != PENDING or not row.operation:
            return row
        record = self.operations.store.get(row.operation)
        if record is None or not record.cancel_requested or not cancel_queued(self.records, row.tenant, row.id):
            return row
        log.info("job %s of tenant %s: cancelled while queued (its operation %s was cancelled)", row.id, row.tenant,
                 row.operation)
        return self.records.job(row.tenant, row.id)

    def _job(self, tenant: str, name: str, field: str):
        job = _job_name(name, field)
        row = self.records.job(tenant, job)
        if row is None:
            raise NotFound("job", name)
        return self._settled(row)

    def CreateProtectionJob(self, request, context):
        tenant = _tenant()
        if not request.request_id:  # stored with the operation, so that a resumed job recognises its own row
            request = js.CreateProtectionJobRequest(job_id=request.job_id, spec=request.spec,
                                                    request_id=str(uuid.uuid4()))
        return js.CreateProtectionJobResponse(operation=self._start(tenant, request))

    def GetProtectionJob(self, request, context):
        return js.GetProtectionJobResponse(job=self.jobs.to_proto(self._job(_tenant(), request.name, "name")))

    def ListProtectionJobs(self, request, context):
        tenant = _tenant()
        rows, token = pagination.page(request, "jobs", lambda after, limit: self.records.jobs(tenant, after or "",
                                                                                             limit),
                                      lambda row: row.id)
        return js.ListProtectionJobsResponse(jobs=[self.jobs.to_proto(self._settled(r)) for r in rows],
                                             next_page_token=token)

    def CancelProtectionJob(self, request, context):
        """Cancels a job that has not finished. A queued one is CANCELLED now and never starts (its operation,
        when it gets a thread, ends CANCELLED without work); one under way has its operation cancelled and stops
        at its next check, releasing what it reserved and did not spend. A finished one is refused."""
        tenant = _tenant()
        row = self._job(tenant, request.name, "name")
        if row.state in FINISHED:
            raise FailedPrecondition(f"job {row.id} {_ENDED[row.state]}: only a job that has not finished can be "
                                     "cancelled", reason="JOB_FINISHED", metadata={"job": row.id, "state": row.state})
        if row.state == PENDING and cancel_queued(self.records, tenant, row.id):
            log.info("job %s of tenant %s: cancelled while queued", row.id, tenant)
        self.records.request_cancel(tenant, row.id)  # for the replica driving it, when that is another one
        row = self.records.job(tenant, row.id)  # the operation is known now, unless its start is still under way
        if row.operation and self.operations.store.get(row.operation) is not None:
            self.operations.cancel(row.operation, tenant)  # ours: it stops at its next check
        return js.CancelProtectionJobResponse(job=self.jobs.to_proto(row))

    def cancel_here(self, tenant: str, job: str) -> None:
        """Cancels the operation of a job this replica drives whose cancel was asked for on another replica (the
        lease heartbeat's call), or carried on after such a cancel."""
        row = self.records.job(tenant, job)
        if row is None or row.state in FINISHED or not row.operation:
            return
        record = self.operations.store.get(row.operation)
        if record is not None and not record.operation.done and not record.cancel_requested:
            log.info("job %s of tenant %s: cancelled on another replica; stopping it here", job, tenant)
            self.operations.cancel(row.operation, tenant)

    # -- rounds -----------------------------------------------------------------------------------------------

    def _budget_left(self, tenant: str):
        """What is left of the tenant's budget, composed once per request (it composes the whole ledger)."""
        return shared_convert.budget_to_proto(self.ledger.balance(tenant).remaining)

    def _round_to_proto(self, row: RoundRow, budget_left) -> js.FeedbackRound:
        message = js.FeedbackRound(name=f"jobs/{row.job}/rounds/{row.round}", intensity=row.intensity,
                                   feedback=_FEEDBACK.get(row.feedback, js.FEEDBACK_UNSPECIFIED),
                                   flagged_samples=row.flagged, risk=row.preview.get("risk", {}),
                                   criteria=[criterion_to_proto(c) for c in row.preview.get("criteria", [])])
        if row.preview.get("cost"):
            message.privacy_cost.CopyFrom(shared_convert.privacy_cost_to_proto(Cost.from_dict(row.preview["cost"])))
        message.budget_left.CopyFrom(budget_left)
        message.create_time.FromNanoseconds(int(row.create_time * 1e9))
        return message

    def GetPreview(self, request, context):
        tenant = _tenant()
        row = self._job(tenant, request.job, "job")
        rounds = self.records.rounds(tenant, row.id)
        if not rounds:
            if row.state in FINISHED:
                raise FailedPrecondition(f"job {row.id} is {row.state.lower()}: {row.error or 'no preview'}",
                                         reason=f"JOB_{row.state}")
            raise FailedPrecondition(f"job {row.id} has not shown a preview yet", reason="ROUND_NOT_READY")
        current = rounds[-1]
        if row.state in FINISHED and current.state not in (AWAITING, ANSWERED):
            raise FailedPrecondition(f"job {row.id} is {row.state.lower()}: {row.error or 'no preview to show'}",
                                     reason=f"JOB_{row.state}")
        if current.state not in (AWAITING, ANSWERED):
            raise FailedPrecondition(f"round {current.round}'s preview is still being made; ask again shortly",
                                     reason="ROUND_NOT_READY")
        spec = js.ProtectionJobSpec.FromString(row.spec)
        bucket = keys.bucket(tenant)
        images = current.preview.get("images", [])
        wanted = {image["key"] for image in images}
        reader = DatasetReader(self.store, bucket, spec.dataset.dataset.removeprefix("datasets/"),
                               spec.dataset.version)
        originals = {s.key: (s, data) for s, data in reader.iter_images(split="test") if s.key in wanted}
        pairs = []
        for image in images:
            sample, data = originals[image["key"]]
            released = self.store.get(bucket, image["object"])
            pairs.append(js.PreviewPair(
                original=image_pb2.Image(data=data, media_type=sample.media_type, sample_key=sample.key),
                anonymized=image_pb2.Image(data=released, media_type="image/png", sample_key=sample.key),
                released_attributes=[image_pb2.AttributeValue(attribute=k, category=v) if isinstance(v, str)
                                     else image_pb2.AttributeValue(attribute=k, number=v)
                                     for k, v in sorted(image["released"].items())]))
        return js.GetPreviewResponse(round=self._round_to_proto(current, self._budget_left(tenant)), pairs=pairs)

    def SubmitFeedback(self, request, context):
        tenant = _tenant()
        job, number = _round_name(request.round, "round")
        if request.feedback not in ANSWERS and not request.flagged_samples:
            raise InvalidInput("feedback", "must be FEEDBACK_ACCEPT, FEEDBACK_MORE_PRIVACY or FEEDBACK_LESS_PRIVACY "
                                           "(or flag samples)")
        flagged = list(request.flagged_samples)
        if len(flagged) > MAX_FLAGGED or len(set(flagged)) != len(flagged):
            raise InvalidInput("flagged_samples", f"must be at most {MAX_FLAGGED} distinct sample keys")
        current = self.records.round(tenant, job, number)
        if self.records.job(tenant, job) is None or current is None:
            raise NotFound("round", request.round)
        shown = {image["key"] for image in current.preview.get("images", [])}
        unknown = [k for k in flagged if k not in shown]
        if unknown:
            raise InvalidInput("flagged_samples", f"{unknown[0]!r} is not in round {number}'s preview")
        answer = ANSWERS.get(request.feedback, "more")
        answered, following = self.jobs.answer(tenant, job, number, answer, flagged, request.request_id)
        left = self._budget_left(tenant)
        response = js.SubmitFeedbackResponse(round=self._round_to_proto(answered, left))
        if following is not None:
            response.next_round.CopyFrom(self._round_to_proto(following, left))
        return response

    def ListFeedbackRounds(self, request, context):
        tenant = _tenant()
        row = self._job(tenant, request.parent, "parent")

        def fetch(after: str | None, limit: int) -> list[RoundRow]:
            return self.records.rounds(tenant, row.id, pagination.integer_position(after), limit)

        rows, token = pagination.page(request, f"rounds/{row.id}", fetch, lambda r: str(r.round))
        left = self._budget_left(tenant)
        return js.ListFeedbackRoundsResponse(rounds=[self._round_to_proto(r, left) for r in rows],
                                             next_page_token=token)

    def GetReport(self, request, context):
        tenant = _tenant()
        row = self._job(tenant, request.job, "job")
        report = row.outputs.get("report")
        if not report:
            raise FailedPrecondition(f"job {row.id} is {row.state.lower()}; its report is written when it succeeds",
                                     reason="REPORT_NOT_READY")
        bucket = keys.bucket(tenant)
        response = js.GetReportResponse(
            report_json=refs_pb2.ObjectRef(bucket=bucket, key=report["json"]),
            report_html=refs_pb2.ObjectRef(bucket=bucket, key=report["html"]), metrics=report["metrics"],
            json_content=self.store.get(bucket, report["json"]), html_content=self.store.get(bucket, report["html"]),
            policy_met=report.get("policy_met", False),
            criteria=[criterion_to_proto(c) for c in report.get("criteria", [])])
        if report.get("pdf"):  # a report written before the PDF, or where WeasyPrint could not load, has none
            response.report_pdf.CopyFrom(refs_pb2.ObjectRef(bucket=bucket, key=report["pdf"]))
            response.pdf_content = self.store.get(bucket, report["pdf"])
        if report.get("privacy_total"):
            response.privacy_total.CopyFrom(shared_convert.privacy_cost_to_proto(
                Cost.from_dict(report["privacy_total"])))
        return response
