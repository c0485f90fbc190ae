"""The protection job, stage by stage: the coordinator's side of Umbra's main job.

    plan(...)            checks the request by field and records the job (once per request_id)
    ProtectionJobs.run   preparing (the generator) -> feedback rounds -> running (anonymize the dataset, commit
                         it, update the model by unlearning, report)

Every stage is written to the database (job_records) before its side effect, and every call to a worker carries
a request_id derived from the job and the stage (and the round), so a coordinator restarted at any moment
resumes the job where it stood: a retried preview is answered by the anonymizer's first answer (charged once),
the anonymized version is reserved once, and no round is lost or repeated.

Preparing reuses the generator the job names, or a DP generator of the tenant trained on the dataset, or trains
one (job_models). Previews come at intensities chosen by bisection (umbra.anonymization.feedback), each charged
in the ledger by the anonymizer and measured by it (MeasureRisk: re-identification by a pretrained face recognizer,
classifiers of the protected attributes). Running anonymizes the whole dataset at the accepted intensity across the
anonymizer replicas, commits it as a new version, has the anonymizer evaluate the release (EvaluateRelease),
updates `spec.model` to it by feature unlearning (verified against retraining when asked), and writes the report.
The coordinator orchestrates and never computes: every measurement is a worker's long-running operation, awaited
like the others (job_workers), and its process loads neither the recognizer nor a classifier. Cancelling (or a
failure) releases what the job reserved and was not spent, and deletes its uncommitted version. A job cancelled
while still queued (PENDING: its operation waits for a thread) is CANCELLED at once (`cancel_queued`) and never
starts: its operation, when it runs, finds it cancelled and ends CANCELLED without doing anything, and nothing is
released, for it reserved nothing. MDP inside the job is refused by field until it is built.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.anonymization import feedback
from umbra.distortion.v1 import distortion_service_pb2 as dds
from umbra.feature_unlearning.probe import check_probe
from umbra.privacy import composition
from umbra.privacy.ledger import RESERVED, PrivacyLedger
from umbra.privacy.mechanisms import Cost
from umbra.privacy import policy as release_policy
from umbra.runtime import metrics, names
from umbra.runtime.sql import DatabaseUnavailable
from umbra.runtime.errors import AlreadyExists, Cancelled, FailedPrecondition, InvalidInput, NotFound, UmbraError
from umbra.services import convert as shared_convert
from umbra.services.coordinator import job_models, job_report, sharding, versions
from umbra.services.coordinator.convert import policy_from_proto
from umbra.services.coordinator.job_privacy import job_epsilon
from umbra.services.coordinator.db import CoordinatorDB
from umbra.services.coordinator.job_records import (ANSWERED, AWAITING, AWAITING_FEEDBACK, CANCELLED, FAILED,
                                                    PENDING, PREPARING, PREVIEWING, RUNNING, SUCCEEDED, JobRecords,
                                                    JobRow)
from umbra.services.coordinator.job_workers import JobWorkers, WorkerFailed, worker_error
from umbra.services.coordinator.locks import DatasetLocks
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader
from umbra.unlearning.v1 import unlearning_service_pb2 as us

log = logging.getLogger(__name__)
DEFAULT_PREVIEW_SIZE, MAX_PREVIEW_SIZE = 8, 16  # the anonymizer's preview limit is 16
GALLERY_OTHERS = 100  # other test faces the recognizer searches among, beside the preview's own originals
EVALUATION_FACES = 300  # released test faces re-identified among their originals for the report (at most)
TIMEOUT = 60.0
MAX_DISTORTION_COPIES = 8
# MDP/AugMDP inside the job: momentum 0.7 at step 0.06 reaches the paper's 100-step feature loss in about a third
# of the steps (benchmarks/distortion.py; the demo's AugMDP step uses the same).
MDP_STEPS, MDP_STEP_SIZE, MDP_MOMENTUM = 35, 0.06, 0.7
# An automatic review stops its search once the intensities left lie this close (at most 6 rounds), where a person
# may go on to umbra.anonymization.feedback.RESOLUTION: each round costs privacy, and a policy is rarely that fine.
AUTOMATIC_RESOLUTION = 1 / 32
ANSWERS = {js.FEEDBACK_ACCEPT: "accept", js.FEEDBACK_MORE_PRIVACY: feedback.MORE,
           js.FEEDBACK_LESS_PRIVACY: feedback.LESS}


@dataclass(frozen=True)
class Plan:
    tenant: str
    job: str
    spec: js.ProtectionJobSpec
    dataset: str
    version: int
    preview_keys: tuple[str, ...]
    gallery_keys: tuple[str, ...]  # the preview's originals first, then other test faces to search among
    probe: str = ""  # with verify_unlearning: the attribute the leakage probe predicts from the model's features
    task: str = ""  # the label spec.model learns (the one MDP protects the mapping of)
    evaluation_keys: tuple[str, ...] = ()  # the test faces the report's re-identification figures are measured on


def plan(records: JobRecords, db: CoordinatorDB, store: ObjectStore, tenant: str,
         request: js.CreateProtectionJobRequest) -> Plan:
    """Checks the request by field before any work, then records the job (the same request_id: the same job)."""
    job = names.validate_resource_id(request.job_id, "job_id")
    spec = request.spec
    dataset = names.dataset(spec.dataset.dataset, "spec.dataset.dataset")
    if spec.dataset.version < 1:
        raise InvalidInput("spec.dataset.version", "must be 1 or more")
    version = db.version(tenant, dataset, spec.dataset.version)
    if version is None or version.state != "COMMITTED":
        raise NotFound("dataset version", f"datasets/{dataset}/versions/{spec.dataset.version}")
    try:
        reader = DatasetReader(store, keys.bucket(tenant), dataset, spec.dataset.version)
    except NotFound:
        raise NotFound("dataset version", f"datasets/{dataset}/versions/{spec.dataset.version}") from None
    columns = set(reader.header.label_columns)
    protected, kept = list(spec.protected_attributes), list(spec.kept_attributes)
    if not protected:
        raise InvalidInput("spec.protected_attributes", "name at least one attribute to protect")
    for field_name, values in (("spec.protected_attributes", protected), ("spec.kept_attributes", kept)):
        if len(set(values)) != len(values):
            raise InvalidInput(field_name, "names an attribute twice")
        unknown = [v for v in values if v not in columns]
        if unknown:
            raise InvalidInput(field_name, f"{unknown[0]!r} is not a label of datasets/{dataset} "
                                           f"(it has {', '.join(sorted(columns)) or 'none'})")
    if set(protected) & set(kept):
        raise InvalidInput("spec.kept_attributes", "overlaps the protected attributes")
    if spec.HasField("budget"):
        shared_convert.budget_from_proto(spec.budget, "spec.budget")
        if spec.budget.epsilon <= 0:
            raise InvalidInput("spec.budget.epsilon", "must be a positive number")
    if not 0.0 <= spec.initial_intensity <= 1.0:
        raise InvalidInput("spec.initial_intensity", "must be in [0, 1] (0: the default)")
    size = spec.preview_size or DEFAULT_PREVIEW_SIZE
    if not 1 <= size <= MAX_PREVIEW_SIZE:
        raise InvalidInput("spec.preview_size", f"must be 1 to {MAX_PREVIEW_SIZE} (0: {DEFAULT_PREVIEW_SIZE})")
    if not 0 <= spec.distortion_copies <= MAX_DISTORTION_COPIES:
        raise InvalidInput("spec.distortion_copies", f"must be 0 (none), 1 (MDP) or up to {MAX_DISTORTION_COPIES} "
                                                     "(AugMDP)")
    if spec.distortion_copies and not spec.HasField("model"):
        raise InvalidInput("spec.distortion_copies", "MDP matches features of spec.model, trained on this dataset: "
                                                     "name the model")
    probe = task = ""
    if spec.HasField("model"):
        task = job_models.check_model(store, keys.bucket(tenant), spec).get("task", "")
        if task not in protected + kept:  # the anonymized version carries the protected and kept labels only
            raise InvalidInput("spec.model", f"learns {task!r}, which the anonymized version will not carry: "
                                             f"protect or keep {task!r} too")
        if spec.verify_unlearning:
            probe = _probe(reader, task, protected + kept)
    elif spec.verify_unlearning:
        raise InvalidInput("spec.verify_unlearning", "verifies the update of spec.model: name the model")
    if spec.HasField("generator"):
        names.model_ref(spec.generator, "spec.generator")
    if not 0 <= spec.seed < 2**32:
        raise InvalidInput("spec.seed", "must be 0 to 2^32 - 1")
    policy_from_proto(spec.policy).validate(protected, kept)
    if spec.review not in (js.REVIEW_UNSPECIFIED, js.REVIEW_PERSON, js.REVIEW_AUTOMATIC):
        raise InvalidInput("spec.review", f"{spec.review} is not a review (REVIEW_PERSON or REVIEW_AUTOMATIC)")
    if spec.review == js.REVIEW_AUTOMATIC and policy_from_proto(spec.policy).empty:
        raise InvalidInput("spec.policy", "an automatic review answers the rounds by the policy: set at least one "
                                          "limit")
    test = sorted(s.key for s in reader.samples() if s.split == "test"
                  and all(a in s.labels for a in protected + kept))
    if len(test) < size:
        raise InvalidInput("spec.preview_size", f"the test split has {len(test)} labelled samples, fewer than "
                                                f"{size}")
    ranked = sorted(test, key=lambda k: hashlib.sha256(f"{spec.seed}\0{k}".encode()).hexdigest())
    stored = spec.SerializeToString()
    row, created = records.insert(JobRow(tenant, job, PENDING, "queued", stored), request.request_id)
    if not created:
        raise AlreadyExists(f"job {job!r} already exists", metadata={"job": job})
    return Plan(tenant, job, spec, dataset, spec.dataset.version, tuple(ranked[:size]),
                tuple(ranked[:size + GALLERY_OTHERS]), probe, task, tuple(ranked[:EVALUATION_FACES]))


def _cancelled_by_tenant(ctx) -> bool:
    """Whether the job's operation was cancelled by the tenant (not only stopped by a shutdown of the coordinator,
    after which the job carries on: umbra.services.coordinator.jobs.JobServicer.resume_interrupted)."""
    return ctx.metadata.progress.cancel_requested


def cancel_queued(records: JobRecords, tenant: str, job: str) -> bool:
    """Cancels the job if it has not started (PENDING): it ends CANCELLED now, and its operation, when it gets a
    thread, finds it so and does nothing. It reserved nothing, so nothing is released. False when it had started
    (or ended) already: then only its operation can stop it."""
    return records.transition(tenant, job, PENDING, state=CANCELLED, stage="cancelled")


def _probe(reader: DatasetReader, task: str, attributes: list[str]) -> str:
    """The attribute the verification's leakage probe predicts from each model's features: the first protected
    (else kept) attribute, other than the model's task, that the unlearning service can score on the test split."""
    why = []
    for attribute in attributes:
        if attribute == task:
            continue
        try:
            check_probe(reader, task=task, attribute=attribute)
            return attribute
        except InvalidInput as exc:
            why.append(f"cannot probe {attribute!r} ({exc.message})")
    raise InvalidInput("spec.verify_unlearning", "the verification's probe predicts a protected or kept attribute "
                                                 "from the model's features, and the job " + (
                                                     "; ".join(why) or f"names no attribute besides the model's "
                                                                        f"task ({task!r})"))


def _search(spec: js.ProtectionJobSpec, answered: list) -> feedback.IntensitySearch:
    """The intensity search after the answers of `answered` rounds (in order)."""
    resolution = AUTOMATIC_RESOLUTION if spec.review == js.REVIEW_AUTOMATIC else feedback.RESOLUTION
    return feedback.IntensitySearch.replay(spec.initial_intensity or feedback.DEFAULT_INITIAL,
                                           [r.feedback for r in answered], resolution=resolution)


def round_criteria(spec: js.ProtectionJobSpec, rounds: list, number: int, preview: dict) -> list[dict]:
    """The job's policy judged on round `number`'s measured figures (`preview`: its images, cost and risk) and on
    the job's ε were this round's intensity released (the rounds so far, and the dataset at this round's cost)."""
    policy = policy_from_proto(spec.policy)
    if policy.empty:
        return []
    costs = [r.preview["cost"] for r in rounds if r.round < number and r.preview.get("cost")] + [preview["cost"]]
    total = job_epsilon(costs, preview["cost"]).total
    figures = release_policy.Figures.of_round(preview.get("risk", {}), len(preview["images"]),
                                              total.epsilon if total else None)
    return [c.to_dict() for c in release_policy.judge(policy, figures)]


def _missed(criteria: list[dict]) -> str:
    return "; ".join(c["summary"] for c in criteria if not c["met"]) or "none"


def _policy_not_met(rounds: list, why: str = "") -> FailedPrecondition:
    """The failure of an automatic review that found no intensity within the budget meeting the policy, naming the
    criteria the round that came closest (the fewest missed, the latest of those) missed."""
    measured = [r for r in rounds if r.preview.get("criteria")]
    closest = min(reversed(measured), key=lambda r: sum(not c["met"] for c in r.preview["criteria"]), default=None)
    shown = ", ".join(f"{r.intensity:.3f}" for r in rounds if r.preview)
    message = f"no intensity within the budget meets the policy ({why or 'the search has no intensity left'}); " \
              f"intensities shown: {shown or 'none'}"
    if closest is not None:
        message += f"; the closest, round {closest.round} at {closest.intensity:.3f}, missed: " \
                   f"{_missed(closest.preview['criteria'])}"
    return FailedPrecondition(message, reason="POLICY_NOT_MET")


def next_intensity(spec: js.ProtectionJobSpec, rounds: list) -> float | None:
    """The intensity of the round after the last answered one (None when no new one is left)."""
    answered = [r for r in rounds if r.state == ANSWERED]
    if not answered or answered[-1].feedback == "accept":
        return None
    search = _search(spec, answered[:-1])
    return search.answer(answered[-1].feedback)


class ProtectionJobs:
    def __init__(self, records: JobRecords, db: CoordinatorDB, store: ObjectStore, locks: DatasetLocks,
                 workers: JobWorkers, ledger: PrivacyLedger):
        self.records, self.db, self.store, self.locks = records, db, store, locks
        self.workers, self.ledger = workers, ledger
        self._changed = threading.Condition()

    def notify(self) -> None:
        """Wakes jobs waiting for an answer (SubmitFeedback calls it)."""
        with self._changed:
            self._changed.notify_all()

    def settings(self, plan: Plan, intensity: float) -> an.AnonymizationSettings:
        spec = plan.spec
        generator = self.records.job(plan.tenant, plan.job).outputs["generator"]
        settings = an.AnonymizationSettings(generator=refs_pb2.ModelRef(**generator),
                                            protected_attributes=spec.protected_attributes,
                                            kept_attributes=spec.kept_attributes, intensity=intensity, seed=spec.seed)
        if spec.HasField("budget"):
            settings.budget.CopyFrom(spec.budget)
        return settings

    # -- the job ------------------------------------------------------------------------------------------------

    def run(self, ctx, plan: Plan) -> js.ProtectionJob:
        records, tenant, job = self.records, plan.tenant, plan.job
        ctx.metadata.job = f"jobs/{job}"
        # Out of the queue: start, unless the job was cancelled while it waited (cancel_queued). Then it ends
        # here, before any work, and has nothing to release.
        if records.job(tenant, job).state == PENDING:
            records.transition(tenant, job, PENDING, state=PREPARING, stage="preparing the generator")
        if records.job(tenant, job).state == CANCELLED:
            raise Cancelled(f"job {job} was cancelled")
        records.update(tenant, job, operation=ctx.name)
        try:
            row = records.job(tenant, job)
            if row.state == PREPARING:
                generator = self._prepare_generator(ctx, plan)
                row = records.update(tenant, job, state=AWAITING_FEEDBACK, stage="feedback",
                                     outputs={"generator": {"model": generator.model, "version": generator.version}})
            if row.state == AWAITING_FEEDBACK:
                accepted = self._feedback_loop(ctx, plan)
                row = records.update(tenant, job, state=RUNNING, stage="anonymizing",
                                     outputs={"accepted_intensity": accepted})
            if row.state == RUNNING:
                self._anonymize_dataset(ctx, plan, row.outputs["accepted_intensity"])
                self._evaluate(ctx, plan)
                if plan.spec.HasField("model"):
                    self._unlearn(ctx, plan)
                if plan.spec.distortion_copies:
                    self._distort(ctx, plan)
                ctx.report(stage="writing the report")
                report = job_report.build(self.store, keys.bucket(tenant), records.job(tenant, job),
                                          records.rounds(tenant, job), plan.spec)
                row = records.update(tenant, job, state=SUCCEEDED, stage="done", outputs={"report": report})
            ctx.report(stage="done")
            return self.to_proto(records.job(tenant, job))
        except DatabaseUnavailable:
            raise  # the job stays as its rows say; the caller waits for the database and runs it on from there
        except Cancelled:
            if not _cancelled_by_tenant(ctx):
                # The coordinator is stopping, not the tenant cancelling: the job stays where it stood, and the
                # same CreateProtectionJob request (its request_id) carries it on.
                records.update(tenant, job, stage="interrupted by a restart of the coordinator")
                raise
            self._abandon(plan)
            records.update(tenant, job, state=CANCELLED, stage="cancelled")
            raise
        except UmbraError as exc:
            self._abandon(plan)
            records.update(tenant, job, state=FAILED, stage="failed", error=exc.message)
            raise
        except Exception:
            self._abandon(plan)
            records.update(tenant, job, state=FAILED, stage="failed", error="internal error")
            raise

    def _prepare_generator(self, ctx, plan: Plan) -> refs_pb2.ModelRef:
        """The generator the job names; else one of the tenant's DP generators trained on the dataset and
        conditioned on the job's attributes; else one the job trains (charged in the ledger by the anonymizer)."""
        spec, tenant = plan.spec, plan.tenant
        if spec.HasField("generator"):
            return spec.generator
        attributes = [*spec.protected_attributes, *spec.kept_attributes]
        found = job_models.reusable_generator(self.store, keys.bucket(tenant), plan.dataset, plan.version, attributes)
        if found is not None:
            ctx.report(stage=f"reusing the generator {found.model}/versions/{found.version}")
            return found
        reader = DatasetReader(self.store, keys.bucket(tenant), plan.dataset, plan.version)
        train = sum(1 for s in reader.samples() if s.split == "train" and all(a in s.labels for a in attributes))
        request = job_models.generator_request(plan.job, spec, sharding.derived_request_id(
            "job", tenant, plan.job, "generator"), train)
        ctx.report(stage=f"training a DP generator ({request.model}, target epsilon "
                         f"{request.privacy.target_epsilon:g})")
        stub = self.workers.anonymizer(tenant)
        try:
            def start():
                return self.workers.call(ctx, stub.TrainGenerator, request, timeout=TIMEOUT,
                                         worker="anonymizer").operation

            result = self.workers.finish(ctx, self.workers.channel(tenant, self.workers.anonymizer_targets[0]),
                                         start(), an.GeneratorResult, stage="training the generator", restart=start,
                                         worker="anonymizer")
        except (UmbraRpcError, OperationFailed) as exc:
            raise worker_error(exc, "anonymizer") from None
        cost = shared_convert.privacy_cost_from_proto(result.privacy_cost, "privacy_cost")
        self.records.update(tenant, plan.job, outputs={"generator_cost": cost.to_dict()})
        return result.generator

    def _feedback_loop(self, ctx, plan: Plan) -> float:
        """Runs rounds until one is accepted; returns its intensity."""
        tenant, job = plan.tenant, plan.job
        initial = plan.spec.initial_intensity or feedback.DEFAULT_INITIAL
        while True:
            ctx.check_cancelled()
            rounds = self.records.rounds(tenant, job)
            current = rounds[-1] if rounds else self.records.open_round(tenant, job, 1, initial)
            ctx.metadata.round = current.round
            if current.state == PREVIEWING:
                ctx.report(stage=f"round {current.round}: previewing at intensity {current.intensity:.3f}")
                self._preview(ctx, plan, current.round, current.intensity)
                metrics.job_rounds.labels("automatic" if plan.spec.review == js.REVIEW_AUTOMATIC else "person").inc()
                spent = [Cost.from_dict(r.preview["cost"]) for r in self.records.rounds(tenant, job)
                         if r.preview.get("cost")]
                ctx.metadata.progress.privacy_spent.CopyFrom(shared_convert.privacy_cost_to_proto(
                    composition.tight(spent, "the job's previews so far")))
                continue
            if current.state == AWAITING and plan.spec.review == js.REVIEW_AUTOMATIC:
                self._answer_by_policy(ctx, plan, current)
                continue
            if current.state == AWAITING:
                waiting = f"round {current.round}: awaiting feedback"
                if ctx.metadata.progress.stage != waiting:
                    ctx.report(stage=waiting)
                with ctx.waiting():  # the answer may take hours: it holds a thread, not one of the pool's slots
                    while not ctx.cancelled and self.records.round(tenant, job, current.round).state == AWAITING:
                        with self._changed:
                            self._changed.wait(1.0)  # woken by SubmitFeedback; polls for answers given elsewhere
                continue
            if current.feedback == "accept":
                return current.intensity
            # Answered, and the next round not opened yet (a restart came between the two): open it now.
            nxt = next_intensity(plan.spec, rounds)
            if nxt is None and plan.spec.review == js.REVIEW_AUTOMATIC:
                raise _policy_not_met(rounds)
            if nxt is None:
                raise FailedPrecondition("no intensity is left that was not shown; the job stops",
                                         reason="NO_INTENSITY_LEFT")
            self.records.open_round(tenant, job, current.round + 1, nxt)

    def _answer_by_policy(self, ctx, plan: Plan, current) -> None:
        """An automatic review's answer to the round awaiting one (umbra.privacy.policy.decide on its criteria);
        when the search has nothing left to show, the job fails naming what the closest round missed."""
        criteria = current.preview.get("criteria") or []
        answer = release_policy.decide([release_policy.Criterion(
            c["name"], c["attribute"], c["value"], c["limit"], c["faces"],
            None if c["low"] is None else (c["low"], c["high"])) for c in criteria])
        ctx.report(stage=f"round {current.round}: the policy answers {answer}")
        log.info("job %s round %d: automatic review answers %s (missed: %s)", plan.job, current.round, answer,
                 _missed(criteria))
        try:
            self.answer(plan.tenant, plan.job, current.round, answer, [],
                        sharding.derived_request_id("job", plan.tenant, plan.job, "policy answer", current.round))
        except FailedPrecondition as exc:
            if exc.reason != "NO_INTENSITY_LEFT":
                raise
            raise _policy_not_met(self.records.rounds(plan.tenant, plan.job)) from None

    def _preview(self, ctx, plan: Plan, number: int, intensity: float) -> None:
        tenant = plan.tenant
        request = an.AnonymizeRequest(settings=self.settings(plan, intensity),
                                      dataset=refs_pb2.DatasetRef(dataset=f"datasets/{plan.dataset}",
                                                                  version=plan.version),
                                      sample_keys=plan.preview_keys,
                                      request_id=sharding.derived_request_id("job", tenant, plan.job, "round", number))
        try:
            response = self.workers.call(ctx, self.workers.anonymizer(tenant).Anonymize, request,
                                         timeout=TIMEOUT * 5, worker="anonymizer")
        except UmbraRpcError as exc:
            error = worker_error(exc, "anonymizer")
            if plan.spec.review == js.REVIEW_AUTOMATIC and error.reason == "PRIVACY_BUDGET_EXHAUSTED":
                raise _policy_not_met(self.records.rounds(tenant, plan.job), f"the budget has no room for round "
                                      f"{number} ({error.message})") from None
            raise error from None
        bucket = keys.bucket(tenant)
        images = []
        for key, image in zip(plan.preview_keys, response.images, strict=True):
            object_key = keys.job_object(plan.job, f"rounds/{number}/{key}.png")
            self.store.put(bucket, object_key, image.image.data, content_type=image.image.media_type)
            images.append({"key": key, "object": object_key,
                           "released": {a.attribute: getattr(a, a.WhichOneof("value") or "category")
                                        for a in image.released_attributes}})
        cost = shared_convert.privacy_cost_from_proto(response.privacy_cost, "privacy_cost").to_dict()
        try:
            risk = self._risk(ctx, plan, number, [image.image for image in response.images])
        except Cancelled:
            if _cancelled_by_tenant(ctx):  # made and charged, but not measured: the round still shows its cost
                self.records.show(tenant, plan.job, number, {"images": images, "cost": cost, "risk": {}})
            raise
        preview = {"images": images, "cost": cost, "risk": risk}
        preview["criteria"] = round_criteria(plan.spec, self.records.rounds(tenant, plan.job), number, preview)
        self.records.show(tenant, plan.job, number, preview)

    def _risk(self, ctx, plan: Plan, number: int, released: list) -> dict[str, float]:
        """What round `number`'s released images (`released`, as Anonymize returned them) still give away, measured
        by the anonymizer (MeasureRisk): how often a pretrained face recognizer finds each one's own original first
        among the preview's originals and other test faces (rank 1) and calls them the same person, and, per
        protected category attribute, how often a classifier trained on the original images still finds its true
        value (beside chance)."""
        request = an.MeasureRiskRequest(
            dataset=refs_pb2.DatasetRef(dataset=f"datasets/{plan.dataset}", version=plan.version),
            sample_keys=plan.preview_keys, gallery_sample_keys=plan.gallery_keys, released_images=released,
            protected_attributes=plan.spec.protected_attributes, kept_attributes=plan.spec.kept_attributes,
            seed=plan.spec.seed, request_id=sharding.derived_request_id("job", plan.tenant, plan.job, "risk", number))
        result = self._measure(ctx, plan, "MeasureRisk", request, an.RiskResult,
                               stage=f"round {number}: measuring the risk")
        return dict(result.metrics)

    def _measure(self, ctx, plan: Plan, method: str, request, response_type, *, stage: str):
        """The result of the anonymizer's long-running `method` (MeasureRisk, EvaluateRelease), awaited like its
        other operations: a restarting anonymizer is waited for, a tenant's cancel cancels it."""
        tenant = plan.tenant
        rpc = getattr(self.workers.anonymizer(tenant), method)
        try:
            def start():
                return self.workers.call(ctx, rpc, request, timeout=TIMEOUT, worker="anonymizer").operation

            return self.workers.finish(ctx, self.workers.channel(tenant, self.workers.anonymizer_targets[0]),
                                       start(), response_type, stage=stage, restart=start, worker="anonymizer")
        except (UmbraRpcError, OperationFailed) as exc:
            raise worker_error(exc, "anonymizer") from None

    def answer(self, tenant: str, job: str, number: int, answer: str, flagged: list[str],
               request_id_: str) -> tuple:
        """Records the tenant's answer to round `number` and opens the next round when the loop goes on.
        Returns (answered round, next round or None)."""
        row = self.records.job(tenant, job)
        if row is None:
            raise NotFound("job", f"jobs/{job}")
        earlier = self.records.round(tenant, job, number)
        if earlier is not None and earlier.state == ANSWERED:  # a retry is answered as the first time; else refused
            answered, _ = self.records.answer(tenant, job, number, answer, flagged, request_id_)
            return answered, (self.records.round(tenant, job, number + 1) if answered.feedback != "accept" else None)
        if row.state != AWAITING_FEEDBACK:
            raise FailedPrecondition(f"job {job} is {row.state.lower()}, not awaiting feedback",
                                     reason="JOB_NOT_AWAITING_FEEDBACK")
        if flagged and answer in ("accept", feedback.LESS):
            raise InvalidInput("flagged_samples", "flagging images asks for more privacy; send them with "
                                                  "FEEDBACK_MORE_PRIVACY or no answer")
        if flagged:
            answer = feedback.MORE
        spec = js.ProtectionJobSpec.FromString(row.spec)
        rounds = self.records.rounds(tenant, job)
        nxt = None
        if answer != "accept":
            search = _search(spec, [r for r in rounds if r.state == ANSWERED and r.round < number])
            nxt = search.answer(answer)
            if nxt is None:
                raise FailedPrecondition(
                    f"no intensity is left between {search.low:.4f} and {search.high:.4f} that was not shown: "
                    "accept one of the rounds at those intensities", reason="NO_INTENSITY_LEFT")
        answered, _ = self.records.answer(tenant, job, number, answer, flagged, request_id_)
        metrics.job_answers.labels(answer).inc()
        following = self.records.open_round(tenant, job, number + 1, nxt) if nxt is not None else None
        self.notify()
        return answered, following

    # -- running ------------------------------------------------------------------------------------------------

    def _anonymize_dataset(self, ctx, plan: Plan, intensity: float) -> None:
        tenant, job, bucket = plan.tenant, plan.job, keys.bucket(plan.tenant)
        row, _ = self.db.new_version(tenant, plan.dataset, 1, "ANONYMIZED",
                                     sharding.derived_request_id("job", tenant, job, "anonymized version"))
        self.records.update(tenant, job, outputs={"anonymized_version": row.version})
        if row.state == "COMMITTED":
            return
        if row.state in versions.OPEN_FOR_UPLOAD:
            ctx.report(stage=f"anonymizing the dataset at intensity {intensity:.3f}")
            request = an.AnonymizeDatasetRequest(
                settings=self.settings(plan, intensity),
                dataset=refs_pb2.DatasetRef(dataset=f"datasets/{plan.dataset}", version=plan.version),
                output_dataset=f"datasets/{plan.dataset}", output_version=row.version,
                request_id=sharding.derived_request_id("job", tenant, job, "anonymize dataset"))
            try:
                result = sharding.anonymize_sharded(
                    self.workers.anonymizer_targets, self.workers.token, tenant, request, store=self.store,
                    progress=lambda done, total: ctx.report(done=done, total=total, unit="shards"),
                    cancelled=lambda: ctx.cancelled, cancel_workers=lambda: _cancelled_by_tenant(ctx),
                    wait_seconds=self.workers.wait_seconds)
            except UmbraRpcError as exc:
                raise worker_error(exc, "anonymizer") from None
            except OperationFailed as exc:
                raise FailedPrecondition(f"anonymizing the dataset failed: {exc.message}",
                                         reason="ANONYMIZATION_FAILED") from None
            cost = shared_convert.privacy_cost_from_proto(result.privacy_cost, "privacy_cost").to_dict()
            self.records.update(tenant, job, outputs={"dataset_cost": cost, "images": result.image_count,
                                                      "left_out": result.left_out})
            with self.locks.exclusive(tenant, plan.dataset):
                self.db.set_version_state(tenant, plan.dataset, row.version, "COMMITTING",
                                          expect=versions.OPEN_FOR_UPLOAD)
        ctx.report(stage="committing the anonymized version")
        versions.commit(_CommitContext(ctx), self.db, self.store, self.locks, bucket,
                        self.db.version(tenant, plan.dataset, row.version), drop_invalid=False)

    def _evaluate(self, ctx, plan: Plan) -> None:
        """For the report, measured by the anonymizer (EvaluateRelease): re-identification of the released test faces
        (up to EVALUATION_FACES) among their originals by the pretrained face recognizer (rank 1, verification
        rate), an adversary retrained on the released images for each protected attribute and the utility kept
        for each kept one (umbra.anonymization.attacks)."""
        tenant, job = plan.tenant, plan.job
        row = self.records.job(tenant, job)
        if row.outputs.get("evaluation"):
            return
        ctx.report(stage=f"measuring re-identification of {len(plan.evaluation_keys)} released test faces")
        request = an.EvaluateReleaseRequest(
            dataset=refs_pb2.DatasetRef(dataset=f"datasets/{plan.dataset}", version=plan.version),
            anonymized_version=row.outputs["anonymized_version"], sample_keys=plan.evaluation_keys,
            protected_attributes=plan.spec.protected_attributes, kept_attributes=plan.spec.kept_attributes,
            seed=plan.spec.seed, request_id=sharding.derived_request_id("job", tenant, job, "evaluate"))
        result = self._measure(ctx, plan, "EvaluateRelease", request, an.EvaluationResult,
                               stage="measuring the release")
        ctx.check_cancelled()
        metrics = dict(result.metrics)
        evaluation = {"reid_rank1": metrics.pop("reid_rank1"), "reid_verify_rate": metrics.pop("reid_verify_rate"),
                      "reid_faces": int(metrics.pop("reid_faces")), **dict(sorted(metrics.items()))}
        self.records.update(tenant, job, outputs={"evaluation": evaluation,
                                                  "evaluation_skipped": dict(result.skipped)})

    def _unlearn(self, ctx, plan: Plan) -> None:
        """Updates spec.model to the anonymized version by feature unlearning (a new version of the same model),
        verified against retraining from scratch when the job asks for it."""
        tenant, job, spec = plan.tenant, plan.job, plan.spec
        row = self.records.job(tenant, job)
        if row.outputs.get("unlearning"):
            return
        anonymized = refs_pb2.DatasetRef(dataset=spec.dataset.dataset, version=row.outputs["anonymized_version"])

        def unlearn(method: int) -> us.UnlearningResult:
            request = us.UnlearnRequest(
                model=spec.model, original=spec.dataset, revision=us.Revision(revised=anonymized), method=method,
                verify=spec.verify_unlearning, output_model=spec.model.model,
                probe_attribute=plan.probe,
                request_id=sharding.derived_request_id("job", tenant, job, "unlearn", us.Method.Name(method)))
            ctx.report(stage=f"updating {spec.model.model}/versions/{spec.model.version} by unlearning")
            def start():
                return self.workers.call(ctx, self.workers.unlearning(tenant).Unlearn, request, timeout=TIMEOUT,
                                         worker="unlearning service").operation

            return self.workers.finish(ctx, self.workers.channel(tenant, self.workers.unlearning_target), start(),
                                       us.UnlearningResult, stage="unlearning", restart=start,
                                       worker="unlearning service")

        refused = ""
        try:
            try:
                result = unlearn(us.METHOD_SECOND_ORDER)
            except WorkerFailed as exc:
                # The service's safety check: a second-order step that raises the loss on the revised training
                # data is never written. The first-order step is searched so that it cannot raise it.
                if exc.reason != "UNLEARNING_DIVERGED":
                    raise
                refused = exc.message
                result = unlearn(us.METHOD_FIRST_ORDER)
        except (UmbraRpcError, OperationFailed) as exc:
            raise worker_error(exc, "unlearning service") from None
        figures = {"model": result.unlearned.model, "version": result.unlearned.version,
                   "changed_samples": result.changed_samples, "removed_samples": result.removed_samples,
                   "method": "first order" if refused else "second order", "second_order_refused": refused,
                   "seconds": result.seconds, "tau": result.tau, "update_norm": result.update_norm,
                   "loss_before": result.loss_before, "loss_after": result.loss_after,
                   "outside_original_privacy_guarantee": result.outside_original_privacy_guarantee}
        if result.HasField("verification"):
            v = result.verification
            figures["verification"] = {
                "accuracy_original": v.accuracy_original, "accuracy_unlearned": v.accuracy_unlearned,
                "accuracy_retrained": v.accuracy_retrained, "agreement_with_retrained": v.agreement_with_retrained,
                "parameter_distance": v.parameter_distance, "retrain_seconds": v.retrain_seconds,
                "probe_attribute": plan.probe, "probe_balanced_accuracy": dict(v.probe_balanced_accuracy),
                "test_count": v.test_count,
                "retrained": f"{v.retrained.model}/versions/{v.retrained.version}"}
        self.records.update(tenant, job, outputs={"unlearning": figures})

    def _distort(self, ctx, plan: Plan) -> None:
        """MDP (one copy) or AugMDP of the anonymized training split (distortion service), with spec.model as the
        feature extractor, into a new version of the dataset that the coordinator reserves and commits."""
        tenant, job, spec = plan.tenant, plan.job, plan.spec
        row = self.records.job(tenant, job)
        if row.outputs.get("distortion"):
            return
        version, _ = self.db.new_version(tenant, plan.dataset, 1, "DISTORTED",
                                         sharding.derived_request_id("job", tenant, job, "distorted version"))
        self.records.update(tenant, job, outputs={"distorted_version": version.version})
        figures: dict = {"version": version.version, "copies": spec.distortion_copies, "label": plan.task}
        if version.state in versions.OPEN_FOR_UPLOAD:
            request = dds.DistortDatasetRequest(
                dataset=refs_pb2.DatasetRef(dataset=f"datasets/{plan.dataset}",
                                            version=row.outputs["anonymized_version"], split="train"),
                label_column=plan.task, feature_extractor=spec.model, copies=spec.distortion_copies,
                steps=MDP_STEPS, step_size=MDP_STEP_SIZE, momentum=MDP_MOMENTUM, seed=spec.seed,
                output_dataset=f"datasets/{plan.dataset}", output_version=version.version,
                request_id=sharding.derived_request_id("job", tenant, job, "distort"))
            ctx.report(stage=f"{'AugMDP' if spec.distortion_copies > 1 else 'MDP'} of the anonymized training split")
            try:
                def start():
                    return self.workers.call(ctx, self.workers.distortion(tenant).DistortDataset, request,
                                             timeout=TIMEOUT, worker="distortion service").operation

                result = self.workers.finish(ctx, self.workers.channel(tenant, self.workers.distortion_target),
                                             start(), dds.DistortionResult, stage="distorting", restart=start,
                                             worker="distortion service")
            except (UmbraRpcError, OperationFailed) as exc:
                raise worker_error(exc, "distortion service") from None
            figures |= {"feature_loss": result.feature_loss, "images": result.image_count}
            self.records.update(tenant, job, outputs={"distortion_run": figures})
            with self.locks.exclusive(tenant, plan.dataset):
                self.db.set_version_state(tenant, plan.dataset, version.version, "COMMITTING",
                                          expect=versions.OPEN_FOR_UPLOAD)
        ctx.report(stage="committing the distorted version")
        versions.commit(_CommitContext(ctx), self.db, self.store, self.locks, keys.bucket(tenant),
                        self.db.version(tenant, plan.dataset, version.version), drop_invalid=False)
        figures = self.records.job(tenant, job).outputs.get("distortion_run", figures)
        self.records.update(tenant, job, outputs={"distortion": figures})

    def _abandon(self, plan: Plan) -> None:
        """After a cancel or a failure: the job's uncommitted versions (anonymized, distorted) are deleted, and the
        charge its dataset anonymization reserved and did not spend is released. Previews and a generator were
        settled by the anonymizer (spent, or released when they failed)."""
        outputs = self.records.job(plan.tenant, plan.job).outputs
        if outputs.get("distorted_version"):
            self._delete_uncommitted(plan, outputs["distorted_version"], "")
        if outputs.get("anonymized_version"):
            self._delete_uncommitted(plan, outputs["anonymized_version"],
                                     f"anonymizer/AnonymizeDataset/datasets/{plan.dataset}/versions/"
                                     f"{outputs['anonymized_version']}/")

    def _delete_uncommitted(self, plan: Plan, version: int, charges: str) -> None:
        """Deletes the job's `version` unless it was committed, and releases the reserved charges whose request_id
        starts with `charges` ("" for none)."""
        tenant = plan.tenant
        with self.locks.exclusive(tenant, plan.dataset):
            row = self.db.version(tenant, plan.dataset, version)
            if row is None or row.state not in (*versions.OPEN_FOR_UPLOAD, "COMMITTING"):
                return  # committed (its charge is spent) or gone; a commit this job's cancel stopped is deleted
            for entry in self.ledger.entries(tenant, dataset=plan.dataset, limit=1000) if charges else ():
                if entry.state == RESERVED and entry.request_id.startswith(charges):
                    self.ledger.release(tenant, entry.request_id)
            self.store.delete_prefix(keys.bucket(tenant), keys.version_prefix(plan.dataset, version))
            self.db.delete_version(tenant, plan.dataset, version)
        log.info("job %s: deleted its uncommitted version %d (and released its reservation)", plan.job, version)

    # -- conversion ---------------------------------------------------------------------------------------------

    def to_proto(self, row: JobRow) -> js.ProtectionJob:
        job = js.ProtectionJob(name=f"jobs/{row.id}", state=getattr(js.ProtectionJob, f"STATE_{row.state}"),
                               spec=js.ProtectionJobSpec.FromString(row.spec), operation=row.operation,
                               accepted_intensity=row.outputs.get("accepted_intensity", 0.0))
        job.create_time.FromNanoseconds(int(row.create_time * 1e9))
        job.update_time.FromNanoseconds(int(row.update_time * 1e9))
        version = row.outputs.get("anonymized_version")
        if version and row.state == SUCCEEDED:
            job.anonymized_dataset.CopyFrom(refs_pb2.DatasetRef(dataset=job.spec.dataset.dataset, version=version))
        distorted = row.outputs.get("distortion")
        if distorted and row.state == SUCCEEDED:
            job.distorted_dataset.CopyFrom(refs_pb2.DatasetRef(dataset=job.spec.dataset.dataset,
                                                               version=distorted["version"]))
        unlearned = row.outputs.get("unlearning")
        if unlearned and row.state == SUCCEEDED:
            job.unlearned_model.CopyFrom(refs_pb2.ModelRef(model=unlearned["model"], version=unlearned["version"]))
        spent = row.outputs.get("report", {}).get("privacy_total")
        if spent:
            job.privacy_spent.CopyFrom(shared_convert.privacy_cost_to_proto(Cost.from_dict(spent)))
        return job


class _CommitContext:
    """The job's operation seen by versions.commit, whose metadata (problems found) stays with the commit."""

    def __init__(self, ctx):
        self._ctx = ctx
        self.metadata = ds.CommitDatasetVersionMetadata()

    @property
    def cancelled(self) -> bool:
        return self._ctx.cancelled

    def check_cancelled(self) -> None:
        self._ctx.check_cancelled()

    def report(self, *, stage=None, **_) -> None:
        if stage:
            self._ctx.report(stage=f"commit: {stage}")

    def save(self) -> None:
        self._ctx.save()

