"""DistortionService: Mapping Distortion based Protection (MDP) and AugMDP over a labelled dataset version.
Validates and converts; the work is umbra.mdp.release. Internal: the caller holds the service credential and
names the tenant in x-umbra-tenant."""

from __future__ import annotations

from umbra.classifiers.architectures import create
from umbra.classifiers.registry import ModelRegistry
from umbra.distortion.v1 import distortion_service_pb2 as ds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.mdp import release
from umbra.runtime import auth, names
from umbra.runtime.errors import InvalidInput
from umbra.runtime.operations import LongRunning, OperationContext, OperationRunner
from umbra.services.distortion import convert
from umbra.services.references import dataset_reader
from umbra.storage import keys
from umbra.storage.base import ObjectStore


def _tenant() -> str:
    return auth.require_tenant("the distortion service acts for a tenant: name it in x-umbra-tenant")


class DistortionServicer(distortion_service_pb2_grpc.DistortionServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner):
        self.store = store
        self.registry = ModelRegistry(store)
        # after a restart the same request runs again; the shards already written are kept
        self._distort = LongRunning(operations, "DistortDataset", ds.DistortDatasetRequest, ds.DistortDatasetMetadata,
                                    plan=self._plan, run=self._run)

    def DistortDataset(self, request, context):
        return ds.DistortDatasetResponse(operation=self._distort.start(_tenant(), request))

    def _plan(self, tenant: str, request: ds.DistortDatasetRequest) -> release.Job:
        bucket = keys.bucket(tenant)
        settings = convert.settings_from_proto(request)
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        if not request.label_column:
            raise InvalidInput("label_column", "is required: the label whose mapping MDP protects")
        output = names.dataset(request.output_dataset or request.dataset.dataset, "output_dataset")
        if request.output_version < 1:
            raise InvalidInput("output_version", "is required: the version the coordinator reserved for the output")
        model, version = names.model_ref(request.feature_extractor, "feature_extractor")
        # NOT_FOUND, also for another tenant's model
        extractor = self.registry.get(bucket, model, version, field="feature_extractor")
        return release.plan(self.store, bucket, reader, label_column=request.label_column,
                            split=request.dataset.split, extractor=extractor, settings=settings,
                            output=(output, request.output_version))

    def _run(self, ctx: OperationContext, job: release.Job) -> ds.DistortionResult:
        ctx.report(stage="loading the extractor")
        extractor = create(job.extractor.config)
        extractor.load_state_dict(self.registry.weights(job.bucket, job.extractor.model, job.extractor.version))

        def progress(done: int, total: int, shards: int, loss: float) -> None:
            ctx.metadata.shards_done, ctx.metadata.feature_loss = shards, loss
            ctx.report(stage="matching features", done=done, total=total, unit="images",
                       message=f"{shards} shards written, feature loss {loss:.4f}")

        ctx.report(stage="loading images")
        result = release.run(job, extractor, progress=progress, cancelled=lambda: ctx.cancelled)
        return convert.result_to_proto(job, result)
