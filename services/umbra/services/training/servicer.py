"""TrainingService: validates, converts, and hands off to umbra.classifiers (job: Train; evaluation: Evaluate).
Internal: the caller holds the service credential and names the tenant in x-umbra-tenant."""

from __future__ import annotations

import dataclasses
import hashlib

from umbra.classifiers import evaluation, job
from umbra.classifiers.registry import ModelRegistry
from umbra.inference import publications
from umbra.runtime import auth, names, pagination
from umbra.runtime.errors import FailedPrecondition
from umbra.runtime.operations import LongRunning, OperationContext, OperationRunner
from umbra.services.references import dataset_reader
from umbra.services.training import convert
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc


def _tenant() -> str:
    return auth.require_tenant("the training service acts for a tenant: name it in x-umbra-tenant")


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner, *, inference_url: str = "",
                 ready_timeout: float = 60.0, max_processes: int = job.DEFAULT_MAX_PROCESSES):
        """`max_processes`: the most data-parallel processes one Train may ask for (its `processes`)."""
        self.store, self.registry = store, ModelRegistry(store)
        self.max_processes = max_processes
        self.inference_url, self.ready_timeout = inference_url, ready_timeout
        self._train = LongRunning(operations, "Train", ts.TrainRequest, ts.TrainMetadata, plan=self._plan_train,
                                  run=self._run_train)
        self._evaluate = LongRunning(operations, "Evaluate", ts.EvaluateRequest, ts.EvaluateMetadata,
                                     plan=self._plan_evaluate, run=self._run_evaluate, resumable=False)

    # -- Train ------------------------------------------------------------------------------------------------

    def Train(self, request, context):
        return ts.TrainResponse(operation=self._train.start(_tenant(), request))

    def _plan_train(self, tenant: str, request: ts.TrainRequest) -> job.Job:
        """The checked job, with the run id its checkpoints are kept under when the request has a request_id."""
        bucket = keys.bucket(tenant)
        model = names.model(request.model, "model")
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        architecture = convert.architecture_from_proto(request.architecture)
        hyper = convert.hyperparameters_from_proto(request.hyperparameters)
        start = (names.model_ref(request.initialize_from, "initialize_from")
                 if request.HasField("initialize_from") else None)
        dp = convert.dp_from_proto(request)
        revise = request.HasField("revision")
        revised = (dataset_reader(self.store, bucket, request.revision.revised, "revision.revised")
                   if request.revision.HasField("revised") else None)
        h = request.hyperparameters
        planned = job.plan(self.registry, bucket, model=model, reader=reader, task=request.task,
                           split=request.dataset.split or "train", architecture=architecture, hyper=hyper,
                           image_size=h.image_size, width=h.width, mirror_average=h.mirror_average, dp=dp,
                           seed=request.seed, start=start, revised=revised, removed=request.revision.removed_keys,
                           revise=revise, processes=request.processes, max_processes=self.max_processes)
        return dataclasses.replace(planned, run=_run_id(request))

    def _run_train(self, ctx: OperationContext, planned: job.Job) -> ts.ModelVersion:
        def progress(stage: str, epoch=None, checkpoint: str = "", privacy: dict | None = None) -> None:
            if epoch is None:
                return ctx.report(stage=stage)
            ctx.metadata.epoch, ctx.metadata.loss = epoch.epoch, epoch.loss
            ctx.metadata.checkpoint.bucket, ctx.metadata.checkpoint.key = planned.bucket, checkpoint
            if privacy is not None:
                ctx.metadata.progress.privacy_spent.CopyFrom(convert.privacy_spent_to_proto(privacy))
            ctx.report(stage=stage, done=epoch.epoch, total=epoch.epochs, unit="epochs",
                       message=f"loss {epoch.loss:.4f}" + (f", epsilon {epoch.epsilon:.3f}" if privacy else ""))

        result = job.run(planned, run_id=planned.run or names.operation(ctx.name), progress=progress,
                         cancelled=lambda: ctx.cancelled)
        ctx.metadata.ClearField("checkpoint")  # the run's checkpoints are gone once its version is written
        stored = self.registry.get(planned.bucket, result.model, result.version)
        return convert.model_version_to_proto(stored, planned.bucket)

    # -- Evaluate ---------------------------------------------------------------------------------------------

    def Evaluate(self, request, context):
        return ts.EvaluateResponse(operation=self._evaluate.start(_tenant(), request))

    def _plan_evaluate(self, tenant: str, request: ts.EvaluateRequest) -> tuple[evaluation.Job, ts.EvaluateRequest]:
        bucket = keys.bucket(tenant)
        model = names.model_ref(request.model, "model")
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        planned = evaluation.plan(self.registry, bucket, model=model, reader=reader,
                                  split=request.dataset.split or "test")
        return planned, request

    def _run_evaluate(self, ctx: OperationContext, planned: tuple[evaluation.Job, ts.EvaluateRequest]
                      ) -> ts.Evaluation:
        def progress(stage: str, total: int = 0) -> None:
            ctx.report(stage=stage, total=total, unit="images" if total else None)

        return convert.evaluation_to_proto(evaluation.run(planned[0], progress=progress), planned[1])

    # -- model versions ---------------------------------------------------------------------------------------

    def ExportModelVersion(self, request, context):
        """Publishes a model version to the inference server and returns once Triton serves it (the same
        publications as the coordinator's ModelService: umbra.inference.publications)."""
        tenant = _tenant()
        model_id, number = names.model_ref(request.model, "model")
        served = names.validate_resource_id(request.served_model_name or model_id, "served_model_name")
        if not self.inference_url:
            raise FailedPrecondition("no inference server is configured for this service (UMBRA_INFERENCE_URL)")
        publication = publications.publish(self.store, tenant, served, model_id, number)
        publications.wait_until_served(self.store, self.inference_url, publication, self.ready_timeout)
        return ts.ExportModelVersionResponse(served_model_name=publication.triton_name, endpoint=self.inference_url)

    def GetModelVersion(self, request, context):
        bucket = keys.bucket(_tenant())
        model_id, number = names.model_version(request.name, "name")
        stored = self.registry.get(bucket, model_id, number, kind=None)
        return ts.GetModelVersionResponse(model_version=convert.model_version_to_proto(stored, bucket))

    def ListModelVersions(self, request, context):
        bucket = keys.bucket(_tenant())
        model = None if request.parent in ("", "models/-") else names.model(request.parent, "parent")

        def fetch(after: str | None, limit: int) -> list[tuple[str, int]]:
            return [(m, v) for m, v in self.registry.versions(bucket, model) if f"{m}/{v:09d}" > (after or "")][:limit]

        found, token = pagination.page(request, request.parent, fetch, lambda mv: f"{mv[0]}/{mv[1]:09d}")
        return ts.ListModelVersionsResponse(next_page_token=token, model_versions=[
            convert.model_version_to_proto(self.registry.get(bucket, m, v, kind=None), bucket) for m, v in found])

    def DeleteModelVersion(self, request, context):
        model_id, number = names.model_version(request.name, "name")
        self.registry.delete(keys.bucket(_tenant()), model_id, number)
        return ts.DeleteModelVersionResponse()


def _run_id(request: ts.TrainRequest) -> str:
    """The run id of a request with a request_id: 32 hex digits of the SHA-256 of the whole request, so the retry
    of an interrupted Train (a new operation, the same request_id and request) resumes from the checkpoints of the
    run it repeats; "" without a request_id (the operation's own id is the run's)."""
    if not request.request_id:
        return ""
    return hashlib.sha256(b"Train\0" + request.SerializeToString(deterministic=True)).hexdigest()[:32]
