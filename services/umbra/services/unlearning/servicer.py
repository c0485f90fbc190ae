"""UnlearningService: feature unlearning of a trained classifier (first and second order) onto revised or
removed training samples, verified on request against retraining from scratch through the training service.
Validates and converts; the work is umbra.feature_unlearning (job, verification). Internal: the caller holds the
service credential and names the tenant in x-umbra-tenant."""

from __future__ import annotations

import dataclasses
import time
import uuid

from umbra.classifiers.registry import ModelRegistry
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.operations import OperationsClient, call
from umbra.common.v1 import refs_pb2
from umbra.feature_unlearning import job, probe, verification
from umbra.runtime import auth, names
from umbra.runtime.errors import InvalidInput, Unavailable
from umbra.runtime.operations import LongRunning, OperationContext, OperationRunner
from umbra.services.references import dataset_reader
from umbra.services.unlearning import convert
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc
from umbra.unlearning.v1 import unlearning_service_pb2 as us
from umbra.unlearning.v1 import unlearning_service_pb2_grpc

RETRAINED_SUFFIX = "-retrained"


def _tenant() -> str:
    return auth.require_tenant("the unlearning service acts for a tenant: name it in x-umbra-tenant")


@dataclasses.dataclass(frozen=True)
class _Plan:
    job: job.Job
    request: us.UnlearnRequest


class UnlearningServicer(unlearning_service_pb2_grpc.UnlearningServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner, *, training_url: str, service_token: str):
        self.store = store
        self.registry = ModelRegistry(store)
        self.training_url = training_url
        self.service_token = service_token
        # after a restart the update is recomputed from the stored request (it takes seconds)
        self._unlearn = LongRunning(operations, "Unlearn", us.UnlearnRequest, us.UnlearnMetadata, plan=self._plan,
                                    run=self._run)

    def Unlearn(self, request, context):
        return us.UnlearnResponse(operation=self._unlearn.start(_tenant(), request))

    def _plan(self, tenant: str, request: us.UnlearnRequest) -> _Plan:
        bucket = keys.bucket(tenant)
        source = names.model_ref(request.model, "model")
        original = dataset_reader(self.store, bucket, request.original, "original")
        which = request.revision.WhichOneof("change")
        if which is None:
            raise InvalidInput("revision", "give a revised dataset version (revised) or keys to remove (removed)")
        revised = (dataset_reader(self.store, bucket, request.revision.revised, "revision.revised")
                   if which == "revised" else None)
        planned = job.plan(self.registry, bucket, source=source, original=original, revised=revised,
                           removed=request.revision.removed.keys if which == "removed" else (),
                           settings=convert.settings_from_proto(request),
                           output_model=names.model(request.output_model or request.model.model, "output_model"))
        if request.verify:
            names.validate_resource_id(planned.output_model + RETRAINED_SUFFIX, "output_model")
            probe.check_probe(original, task=planned.source.record["task"], attribute=request.probe_attribute)
        return _Plan(planned, request)

    def _run(self, ctx: OperationContext, plan: _Plan) -> us.UnlearningResult:
        result = job.run(plan.job, progress=lambda stage: ctx.report(stage=stage), cancelled=lambda: ctx.cancelled)
        ctx.metadata.gradient_evaluations = result.update.gradient_evaluations
        response = convert.result_to_proto(result, plan.job.output_model, plan.job.source)
        if plan.request.verify:
            response.verification.CopyFrom(self._verify(ctx, plan, result))
        return response

    def _verify(self, ctx: OperationContext, plan: _Plan, result: job.Result) -> us.Verification:
        """Retrains from scratch on the revised data through the training service (same recipe, seed, starting
        point and DP noise) and compares the three models on the original version's test split."""
        request, planned = plan.request, plan.job
        revision = (refs_pb2.DatasetRevision(revised=request.revision.revised) if planned.revision.revised
                    is not None else refs_pb2.DatasetRevision(removed_keys=request.revision.removed.keys))
        train = convert.retrain_request(planned.source, model=f"models/{planned.output_model}{RETRAINED_SUFFIX}",
                                        revision=revision, request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, ctx.name)))
        ctx.report(stage="retraining from scratch (training service)")
        channel = open_channel(self.training_url, self.service_token, tenant=ctx.tenant)
        started = time.perf_counter()
        try:
            op = call(training_service_pb2_grpc.TrainingServiceStub(channel).Train, train, timeout=60)
            retrained = OperationsClient(channel).result(op.operation.name, ts.ModelVersion, poll_seconds=2)
        except (UmbraRpcError, OperationFailed) as exc:
            raise Unavailable(f"verification: retraining through the training service at {self.training_url} "
                              f"failed ({exc}); the unlearned version is written") from None
        finally:
            channel.close()
        retrain_seconds = time.perf_counter() - started
        ctx.report(stage="comparing with the retrained model")
        version = names.model_version(retrained.name, "retrained")
        compared, count = verification.against_retrained(self.registry, planned.bucket, planned.source, result.model,
                                                         version, planned.revision.original,
                                                         attribute=request.probe_attribute)
        return convert.verification_to_proto(compared, count, version, retrain_seconds)
