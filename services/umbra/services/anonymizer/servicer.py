"""AnonymizerService: validates, converts, charges the privacy ledger and hands off. Generator training is
umbra.anonymization.generator_training; previews umbra.anonymization.preview; a whole dataset
umbra.anonymization.dataset. Internal: the caller holds the service credential and names the tenant in
x-umbra-tenant.

Privacy: before any work that spends privacy, the charge is reserved in the coordinator's ledger (the tenant's one
budget, shared by every replica), and committed when the work is done or released when it fails:
- TrainGenerator: the target (ε, δ) against the training dataset; committed with what the run really spent.
- Anonymize (a preview) and AnonymizeDataset: one image's image and attribute costs against the dataset.
  AnonymizeDataset's charge is named after the output version and the request less request_id and shards, so the
  calls that split one version across replicas share it: a call given `shards` reserves it (refused before any
  work when the budget is spent) and leaves it reserved; the call without `shards`, which finishes the version,
  commits it (or releases it when it fails). The plan, charge and run are dataset_run's, which a Kubernetes
  Indexed Job's pods run too (umbra.services.anonymizer.indexed_job).

MeasureRisk (a preview's risk) and EvaluateRelease (a release's evaluation for the report) spend no privacy: they
measure released images against the tenant's originals (umbra.services.anonymizer.audit), as long-running
operations, so the coordinator only orchestrates.
"""

from __future__ import annotations

import dataclasses

from umbra.anonymization import dataset as anonymized_dataset
from umbra.anonymization import preview
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.common.v1 import refs_pb2
from umbra.classifiers.registry import ModelRegistry
from umbra.anonymization import generator_training as generator_job
from torch import nn

from umbra.privacy.mechanisms import Cost
from umbra.runtime import auth, bounds, names
from umbra.runtime.errors import FailedPrecondition, InvalidInput
from umbra.runtime.operations import LongRunning, OperationContext, OperationRunner
from umbra.services.anonymizer import audit, convert, dataset_run
from umbra.services.anonymizer.dataset_run import Charged
from umbra.services.convert import budget_from_proto, privacy_cost_to_proto
from umbra.services.ledger_client import LedgerClient
from umbra.services.references import dataset_reader
from umbra.storage import keys
from umbra.storage.base import ObjectStore


MAX_IMAGE_COUNT = 10**9  # EstimatePrivacyCost's image_count (the cost of a dataset is one image's, see below)


def _tenant() -> str:
    return auth.require_tenant("the anonymizer acts for a tenant: name it in x-umbra-tenant")


class AnonymizerServicer(anonymizer_service_pb2_grpc.AnonymizerServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner, ledger: LedgerClient):
        self.store, self.registry, self.ledger = store, ModelRegistry(store), ledger
        self._train = LongRunning(operations, "TrainGenerator", an.TrainGeneratorRequest, an.TrainGeneratorMetadata,
                                  plan=self._plan_training, run=self._run_training)
        self._dataset = LongRunning(operations, "AnonymizeDataset", an.AnonymizeDatasetRequest,
                                    an.AnonymizeDatasetMetadata, plan=self._plan_dataset, run=self._run_dataset)
        self._risk = LongRunning(operations, "MeasureRisk", an.MeasureRiskRequest, an.MeasureRiskMetadata,
                                 plan=self._plan_risk, run=self._run_risk)
        self._evaluation = LongRunning(operations, "EvaluateRelease", an.EvaluateReleaseRequest,
                                       an.EvaluateReleaseMetadata, plan=self._plan_evaluation,
                                       run=self._run_evaluation)
        self._audit_cache = audit.AuditCache.create()

    def _reserve(self, tenant: str, dataset: str, cost: Cost, charge: str, spent_by: str, budget, field: str) -> None:
        self.ledger.reserve(tenant, dataset, cost, request_id=charge, spent_by=spent_by,
                            limit=budget_from_proto(budget, field))

    # --- the generator ---------------------------------------------------------------------------------------

    def TrainGenerator(self, request, context):
        tenant = _tenant()
        charged = self._plan_training(tenant, request)  # every bad input refused here, before any compute
        job: generator_job.Job = charged.job
        cost, limit = job.reserved_cost(), budget_from_proto(request.budget, "budget")
        if cost is None and limit is not None:
            raise FailedPrecondition("a generator trained without DP has no finite ε; it cannot be trained within a "
                                     "privacy budget (set privacy.target_epsilon)", reason="PRIVACY_BUDGET_EXHAUSTED")
        if cost is not None:
            self._reserve(tenant, job.reader.dataset, cost, charged.charge, "TrainGenerator", request.budget, "budget")
        return an.TrainGeneratorResponse(operation=self._train.start(tenant, request))

    def _plan_training(self, tenant: str, request: an.TrainGeneratorRequest) -> Charged:
        bucket = keys.bucket(tenant)
        model = names.model(request.model, "model")
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        start = names.model_ref(request.initialize_from, "initialize_from") if request.HasField("initialize_from") \
            else None
        job = generator_job.plan(self.registry, bucket, model=model, reader=reader, split=request.dataset.split or
                                 "train", attributes=list(request.condition_attributes), image_size=request.image_size,
                                 hyper=convert.hyper_from_proto(request), dp=convert.dp_from_proto(request.privacy),
                                 start=start, seed=request.seed, design=request.design or "latent",
                                 latent_dim=request.latent_dim or 64, public=request.initialize_from_public)
        return Charged(job, convert.charge_id("TrainGenerator", request) if job.dp else "")

    def _run_training(self, ctx: OperationContext, charged: Charged) -> an.GeneratorResult:
        job: generator_job.Job = charged.job

        def progress(report, spent: Cost | None) -> None:
            ctx.metadata.epoch, ctx.metadata.loss = report.epoch, report.loss
            if spent is not None:
                ctx.metadata.progress.privacy_spent.CopyFrom(privacy_cost_to_proto(spent))
            ctx.report(stage="training", done=report.epoch, total=report.epochs, unit="epochs",
                       message=f"loss {report.loss:.4f}" + (f", epsilon {spent.epsilon:.3f}" if spent else ""))

        with self.ledger.settles(ctx.tenant, charged.charge) as settlement:
            result = generator_job.run(job, run_id=ctx.name.removeprefix("operations/"), progress=progress,
                                       stage=lambda name: ctx.report(stage=name), cancelled=lambda: ctx.cancelled)
            settlement.cost = result.cost  # what the run spent, at most the target reserved
        return convert.generator_result_to_proto(result.model, result.version, result.cost)

    # --- anonymizing (the settings, the generator, a dataset's plan, charge and run: dataset_run) -------------

    def EstimatePrivacyCost(self, request, context):
        """One image's cost, which is also a dataset's (each image is a different person's, so their costs do
        not add up: parallel composition); priced for the generator's own training dataset, so ε_g is in it."""
        tenant = _tenant()
        bounds.integer(request.image_count, "image_count", 0, MAX_IMAGE_COUNT)
        checked = dataset_run.check(self.registry, keys.bucket(tenant), request.settings, "", [], 0)
        return an.EstimatePrivacyCostResponse(privacy_cost=privacy_cost_to_proto(checked.cost.per_image))

    def Anonymize(self, request, context):
        tenant = _tenant()
        bucket = keys.bucket(tenant)
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        checked = dataset_run.checked(self.registry, bucket, request.settings, reader)
        samples = preview.check(reader, checked, list(request.sample_keys))
        charge = convert.charge_id("Anonymize", request)
        self._reserve(tenant, reader.dataset, dataclasses.replace(checked.cost.charged,
                                                                  description="anonymization preview"),
                      charge, "Anonymize", request.settings.budget, "settings.budget")
        with self.ledger.settles(tenant, charge):
            net = dataset_run.load_net(self.registry, checked.generator, bucket)
            shown = preview.run(net, checked, reader, samples, seed=request.settings.seed)
        return convert.preview_to_proto(shown, checked)

    def AnonymizeDataset(self, request, context):
        tenant = _tenant()
        dataset_run.reserve(self.ledger, tenant, self._plan_dataset(tenant, request), request)
        return an.AnonymizeDatasetResponse(operation=self._dataset.start(tenant, request))

    def _plan_dataset(self, tenant: str, request: an.AnonymizeDatasetRequest) -> Charged:
        return dataset_run.plan(self.store, self.registry, tenant, request)

    def _run_dataset(self, ctx: OperationContext, charged: Charged) -> an.AnonymizationResult:
        job: anonymized_dataset.Job = charged.job

        def progress(done: int, total: int, shards: int) -> None:
            ctx.metadata.shards_done = shards
            ctx.report(stage="anonymizing", done=done, total=total, unit="images", message=f"{shards} shards written")

        def load() -> nn.Module:
            ctx.report(stage="loading the generator")
            return dataset_run.load_net(self.registry, job.request.generator, job.out.bucket)

        result = dataset_run.run(self.ledger, ctx.tenant, charged, load, progress=progress,
                                 cancelled=lambda: ctx.cancelled)
        return convert.anonymization_result_to_proto(job, result)

    # --- measuring what released images give away -------------------------------------------------------------

    def MeasureRisk(self, request, context):
        return an.MeasureRiskResponse(operation=self._risk.start(_tenant(), request))

    def _plan_risk(self, tenant: str, request: an.MeasureRiskRequest) -> audit.RiskJob:
        reader = dataset_reader(self.store, keys.bucket(tenant), request.dataset, "dataset")
        return audit.plan_risk(reader, sample_keys=list(request.sample_keys),
                               gallery_keys=list(request.gallery_sample_keys),
                               released=[image.data for image in request.released_images],
                               released_keys=[image.sample_key for image in request.released_images],
                               protected=list(request.protected_attributes), seed=request.seed,
                               kept=list(request.kept_attributes))

    def _run_risk(self, ctx: OperationContext, job: audit.RiskJob) -> an.RiskResult:
        return convert.risk_result_to_proto(audit.measure_risk(job, self._audit_cache,
                                                               progress=lambda stage: ctx.report(stage=stage),
                                                               cancelled=lambda: ctx.cancelled))

    def EvaluateRelease(self, request, context):
        return an.EvaluateReleaseResponse(operation=self._evaluation.start(_tenant(), request))

    def _plan_evaluation(self, tenant: str, request: an.EvaluateReleaseRequest) -> audit.EvaluationJob:
        bucket = keys.bucket(tenant)
        original = dataset_reader(self.store, bucket, request.dataset, "dataset")
        if request.anonymized_version < 1:
            raise InvalidInput("anonymized_version", "must be 1 or more")
        released = refs_pb2.DatasetRef(dataset=request.dataset.dataset, version=request.anonymized_version)
        return audit.plan_evaluation(original, dataset_reader(self.store, bucket, released, "anonymized_version"),
                                     sample_keys=list(request.sample_keys),
                                     protected=list(request.protected_attributes),
                                     kept=list(request.kept_attributes), seed=request.seed)

    def _run_evaluation(self, ctx: OperationContext, job: audit.EvaluationJob) -> an.EvaluationResult:
        return convert.evaluation_result_to_proto(audit.evaluate(job, progress=lambda stage: ctx.report(stage=stage),
                                                                 cancelled=lambda: ctx.cancelled))
