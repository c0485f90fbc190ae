"""The protection job, stage by stage: the coordinator's side of Umbra's main job.

    plan(...)            checks the request by field and records the job (once per request_id)
    ProtectionJobs.run   preparing -> feedback rounds -> running (anonymize the dataset, commit it, report)

Every stage is written to the database (job_records) before its side effect, and every call to a worker carries
a request_id derived from the job and the stage (and the round), so a coordinator restarted at any moment
resumes the job where it stood: a retried preview is answered by the anonymizer's first answer (charged once),
the anonymized version is reserved once, and no round is lost or repeated.

Built so far: previews at intensities chosen by bisection (umbra.anonymization.feedback), each charged in the
ledger by the anonymizer and measured for re-identification by a pretrained face recognizer, the whole dataset
anonymized at the accepted intensity and committed as a new version, and the report. The job must name its
generator (training one inside the job, MDP, unlearning and a baseline model are refused by field until they
are built).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

import numpy as np

from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.operations import call
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.anonymization import feedback, reidentification
from umbra.dataset.images import decode_rgb
from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost
from umbra.runtime import names
from umbra.runtime.errors import (AlreadyExists, BudgetExhausted, Cancelled, FailedPrecondition, InvalidInput, NotFound,
                                  UmbraError, Unavailable)
from umbra.services import convert as shared_convert
from umbra.services.coordinator import job_report, sharding, versions
from umbra.services.coordinator.db import CoordinatorDB
from umbra.services.coordinator.job_records import (ANSWERED, AWAITING, AWAITING_FEEDBACK, CANCELLED, FAILED,
                                                    PENDING, PREVIEWING, RUNNING, SUCCEEDED, JobRecords, JobRow)
from umbra.services.coordinator.locks import DatasetLocks
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader

log = logging.getLogger(__name__)
DEFAULT_PREVIEW_SIZE, MAX_PREVIEW_SIZE = 8, 16  # the anonymizer's preview limit is 16
GALLERY_OTHERS = 100  # other test faces the recognizer searches among, beside the preview's own originals
TIMEOUT = 60.0
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
    if spec.distortion_copies:
        raise InvalidInput("spec.distortion_copies", "MDP inside the job is not built yet: leave it 0")
    if spec.HasField("model") or spec.verify_unlearning:
        raise InvalidInput("spec.model", "updating a model by unlearning inside the job is not built yet")
    if not spec.HasField("generator"):
        raise InvalidInput("spec.generator", "name the DP generator trained on this dataset (training one inside "
                                             "the job is not built yet)")
    names.model_ref(spec.generator, "spec.generator")
    if not 0 <= spec.seed < 2**32:
        raise InvalidInput("spec.seed", "must be 0 to 2^32 - 1")
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
                tuple(ranked[:size + GALLERY_OTHERS]))


def _search(spec: js.ProtectionJobSpec, answered: list) -> feedback.IntensitySearch:
    """The intensity search after the answers of `answered` rounds (in order)."""
    return feedback.IntensitySearch.replay(spec.initial_intensity or feedback.DEFAULT_INITIAL,
                                           [r.feedback for r in answered])


def next_intensity(spec: js.ProtectionJobSpec, rounds: list) -> float | None:
    """The intensity of the round after the last answered one (None when no new one is left)."""
    answered = [r for r in rounds if r.state == ANSWERED]
    if not answered or answered[-1].feedback == "accept":
        return None
    search = _search(spec, answered[:-1])
    return search.answer(answered[-1].feedback)


class Anonymizers:
    """The anonymizer replicas a job calls, as the service credential acting for the job's tenant."""

    def __init__(self, targets: list[str], service_token: str):
        if not targets:
            raise ValueError("no anonymizer address")
        self.targets, self.token = targets, service_token
        self._channels: dict[tuple[str, int], object] = {}  # one per tenant and replica, reused
        self._lock = threading.Lock()

    def _channel(self, tenant: str, index: int):
        key = (tenant, index % len(self.targets))
        with self._lock:
            if key not in self._channels:
                self._channels[key] = open_channel(self.targets[key[1]], self.token, tenant=tenant)
            return self._channels[key]

    def stub(self, tenant: str, index: int = 0) -> anonymizer_service_pb2_grpc.AnonymizerServiceStub:
        return anonymizer_service_pb2_grpc.AnonymizerServiceStub(self._channel(tenant, index))


def _worker_error(exc: UmbraRpcError) -> UmbraError:
    """A worker's refusal as this job's error: a spent budget stays FAILED_PRECONDITION PRIVACY_BUDGET_EXHAUSTED."""
    if exc.reason == "PRIVACY_BUDGET_EXHAUSTED":
        return BudgetExhausted(exc.message, metadata=exc.metadata)
    if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return Unavailable(f"the anonymizer cannot be reached: {exc.message}")
    return FailedPrecondition(f"the anonymizer refused: {exc.message}", reason=exc.reason or "WORKER_REFUSED")


class ProtectionJobs:
    def __init__(self, records: JobRecords, db: CoordinatorDB, store: ObjectStore, locks: DatasetLocks,
                 anonymizers: Anonymizers):
        self.records, self.db, self.store, self.locks, self.anonymizers = records, db, store, locks, anonymizers
        self._changed = threading.Condition()
        self._galleries: dict[tuple[str, str], np.ndarray] = {}  # a job's originals, embedded once per process
        self._gallery_lock = threading.Lock()

    def notify(self) -> None:
        """Wakes jobs waiting for an answer (SubmitFeedback calls it)."""
        with self._changed:
            self._changed.notify_all()

    def settings(self, plan: Plan, intensity: float) -> an.AnonymizationSettings:
        spec = plan.spec
        settings = an.AnonymizationSettings(generator=spec.generator, protected_attributes=spec.protected_attributes,
                                            kept_attributes=spec.kept_attributes, intensity=intensity, seed=spec.seed)
        if spec.HasField("budget"):
            settings.budget.CopyFrom(spec.budget)
        return settings

    # -- the job ------------------------------------------------------------------------------------------------

    def run(self, ctx, plan: Plan) -> js.ProtectionJob:
        records, tenant, job = self.records, plan.tenant, plan.job
        ctx.metadata.job = f"jobs/{job}"
        records.update(tenant, job, operation=ctx.name)
        try:
            row = records.job(tenant, job)
            if row.state == PENDING:
                row = records.update(tenant, job, state=AWAITING_FEEDBACK, stage="feedback")
            if row.state == AWAITING_FEEDBACK:
                accepted = self._feedback_loop(ctx, plan)
                row = records.update(tenant, job, state=RUNNING, stage="anonymizing",
                                     outputs={"accepted_intensity": accepted})
            if row.state == RUNNING:
                self._anonymize_dataset(ctx, plan, row.outputs["accepted_intensity"])
                ctx.report(stage="writing the report")
                report = job_report.build(self.store, keys.bucket(tenant), records.job(tenant, job),
                                          records.rounds(tenant, job), plan.spec)
                row = records.update(tenant, job, state=SUCCEEDED, stage="done", outputs={"report": report})
            ctx.report(stage="done")
            return self.to_proto(records.job(tenant, job))
        except Cancelled:
            records.update(tenant, job, state=CANCELLED, stage="cancelled")
            raise
        except UmbraError as exc:
            records.update(tenant, job, state=FAILED, stage="failed", error=exc.message)
            raise
        except Exception:
            records.update(tenant, job, state=FAILED, stage="failed", error="internal error")
            raise

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
                self._preview(plan, current.round, current.intensity)
                spent = [Cost.from_dict(r.preview["cost"]) for r in self.records.rounds(tenant, job)
                         if r.preview.get("cost")]
                ctx.metadata.progress.privacy_spent.CopyFrom(shared_convert.privacy_cost_to_proto(
                    composition.tight(spent, "the job's previews so far")))
                continue
            if current.state == AWAITING:
                waiting = f"round {current.round}: awaiting feedback"
                if ctx.metadata.progress.stage != waiting:
                    ctx.report(stage=waiting)
                with self._changed:
                    self._changed.wait(1.0)  # woken by SubmitFeedback; polls for answers given elsewhere
                continue
            if current.feedback == "accept":
                return current.intensity
            # Answered, and the next round not opened yet (a restart came between the two): open it now.
            nxt = next_intensity(plan.spec, rounds)
            if nxt is None:
                raise FailedPrecondition("no intensity is left that was not shown; the job stops",
                                         reason="NO_INTENSITY_LEFT")
            self.records.open_round(tenant, job, current.round + 1, nxt)

    def _preview(self, plan: Plan, number: int, intensity: float) -> None:
        tenant = plan.tenant
        request = an.AnonymizeRequest(settings=self.settings(plan, intensity),
                                      dataset=refs_pb2.DatasetRef(dataset=f"datasets/{plan.dataset}",
                                                                  version=plan.version),
                                      sample_keys=plan.preview_keys,
                                      request_id=sharding.derived_request_id("job", tenant, plan.job, "round", number))
        try:
            response = call(self.anonymizers.stub(tenant).Anonymize, request, timeout=TIMEOUT * 5)
        except UmbraRpcError as exc:
            raise _worker_error(exc) from None
        bucket = keys.bucket(tenant)
        images = []
        for key, image in zip(plan.preview_keys, response.images, strict=True):
            object_key = keys.job_object(plan.job, f"rounds/{number}/{key}.png")
            self.store.put(bucket, object_key, image.image.data, content_type=image.image.media_type)
            images.append({"key": key, "object": object_key,
                           "released": {a.attribute: getattr(a, a.WhichOneof("value") or "category")
                                        for a in image.released_attributes}})
        cost = shared_convert.privacy_cost_from_proto(response.privacy_cost, "privacy_cost").to_dict()
        risk = self._risk(plan, [image.image.data for image in response.images])
        self.records.show(tenant, plan.job, number, {"images": images, "cost": cost, "risk": risk})

    def _risk(self, plan: Plan, released: list[bytes]) -> dict[str, float]:
        """How often a pretrained face recognizer (dlib's ResNet, umbra.anonymization.reidentification) finds
        each released face's own original first among the preview's originals and other test faces (rank 1),
        and how often it calls them the same person (distance < 0.6)."""
        key = (plan.tenant, plan.job)
        with self._gallery_lock:
            gallery = self._galleries.get(key)
        if gallery is None:
            wanted = {k: i for i, k in enumerate(plan.gallery_keys)}
            faces: list = [None] * len(wanted)
            reader = DatasetReader(self.store, keys.bucket(plan.tenant), plan.dataset, plan.version)
            for sample, data in reader.iter_images(split="test"):
                if sample.key in wanted:
                    faces[wanted[sample.key]] = decode_rgb(data)
            gallery = reidentification.recognizer().embed(np.stack(faces))
            with self._gallery_lock:
                self._galleries[key] = gallery
        embedded = reidentification.recognizer().embed(np.stack([decode_rgb(data) for data in released]))
        result = reidentification.reidentify(embedded, gallery)
        return {"reid_rank1": result.rank1, "reid_verify_rate": result.verify_rate,
                "reid_gallery": float(len(gallery))}

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
                    self.anonymizers.targets, self.anonymizers.token, tenant, request, store=self.store,
                    progress=lambda done, total: ctx.report(done=done, total=total, unit="shards"),
                    cancelled=lambda: ctx.cancelled)
            except UmbraRpcError as exc:
                raise _worker_error(exc) from None
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

