"""DistortionService: Mapping Distortion based Protection (MDP) and AugMDP over a labelled dataset version.
Validates and converts; the work is umbra.mdp.release. Internal: the caller holds the service credential and
names the tenant in x-umbra-tenant."""

from __future__ import annotations

from umbra.classifiers.architectures import create
from umbra.classifiers.registry import ModelRegistry
from umbra.common.v1 import refs_pb2
from umbra.distortion.v1 import distortion_service_pb2 as ds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.mdp import release
from umbra.runtime import auth
from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.errors import InvalidInput
from umbra.runtime.operations import OperationRunner
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.services.references import dataset_id, dataset_reader, model_ref
from umbra.storage import keys, open_store
from umbra.storage.base import ObjectStore

KIND = "DistortDataset"
_POLICIES = {ds.START_POLICY_UNSPECIFIED: "random_other_class",
             ds.START_POLICY_RANDOM_OTHER_CLASS: "random_other_class"}


def _tenant() -> str:
    return auth.require_tenant("the distortion service acts for a tenant: name it in x-umbra-tenant")


def _settings(request: ds.DistortDatasetRequest) -> release.Settings:
    """The request's settings with the documented defaults for zero; copies has none (0 is refused)."""
    if request.start_policy not in _POLICIES:
        raise InvalidInput("start_policy", "is not a known start-image policy")
    defaults = release.Settings()
    return release.Settings(copies=request.copies, steps=request.steps or defaults.steps,
                            step_size=request.step_size or defaults.step_size, momentum=request.momentum,
                            batch_size=request.batch_size or defaults.batch_size, seed=request.seed,
                            start_policy=_POLICIES[request.start_policy]).validate()


class DistortionServicer(distortion_service_pb2_grpc.DistortionServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner):
        self.store = store
        self.registry = ModelRegistry(store)
        self.operations = operations

    def DistortDataset(self, request, context):
        tenant = _tenant()
        job = self._plan(tenant, request)  # every bad input is refused here, before any compute
        op = self.operations.start(kind=KIND, tenant=tenant, metadata=ds.DistortDatasetMetadata(),
                                   work=lambda ctx: self._run(ctx, job), request_id=request.request_id,
                                   resume_request=request)
        return ds.DistortDatasetResponse(operation=op)

    def resume(self, ctx, request_bytes: bytes) -> ds.DistortionResult:
        """After a restart: the same request again; the shards already written are kept."""
        request = ds.DistortDatasetRequest.FromString(request_bytes)
        return self._run(ctx, self._plan(ctx.tenant, request))

    def _plan(self, tenant: str, request: ds.DistortDatasetRequest) -> release.Job:
        bucket = keys.bucket(tenant)
        settings = _settings(request)
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        if not request.label_column:
            raise InvalidInput("label_column", "is required: the label whose mapping MDP protects")
        output = dataset_id(request.output_dataset or request.dataset.dataset, "output_dataset")
        if request.output_version < 1:
            raise InvalidInput("output_version", "is required: the version the coordinator reserved for the output")
        model, version = model_ref(request.feature_extractor, "feature_extractor")
        # NOT_FOUND, also for another tenant's model
        extractor = self.registry.get(bucket, model, version, field="feature_extractor")
        return release.plan(self.store, bucket, reader, label_column=request.label_column,
                            split=request.dataset.split, extractor=extractor, settings=settings,
                            output=(output, request.output_version))

    def _run(self, ctx, job: release.Job) -> ds.DistortionResult:
        ctx.report(stage="loading the extractor")
        extractor = create(job.extractor.config)
        extractor.load_state_dict(self.registry.weights(job.bucket, job.extractor.model, job.extractor.version))

        def progress(done: int, total: int, shards: int, loss: float) -> None:
            ctx.metadata.shards_done, ctx.metadata.feature_loss = shards, loss
            ctx.report(stage="matching features", done=done, total=total, unit="images",
                       message=f"{shards} shards written, feature loss {loss:.4f}")

        ctx.report(stage="loading images")
        result = release.run(job, extractor, progress=progress,
                             cancelled=lambda: ctx.cancelled)
        dataset, number = job.output
        return ds.DistortionResult(
            released=refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=number),
            record=refs_pb2.ObjectRef(bucket=job.bucket, key=result.record_key), feature_loss=result.feature_loss,
            image_count=result.samples, unlabelled_skipped=result.unlabelled)


def build(runtime: Runtime) -> Built:
    servicer = DistortionServicer(open_store(runtime.config.store), runtime.operations)
    runtime.operations.register_resumer(KIND, servicer.resume)
    return Built(
        registrations=[registration(ds, distortion_service_pb2_grpc, "DistortionService", servicer)],
        authenticator=ServiceAuthenticator(runtime.config.service_token),
    )


SPEC = ServiceSpec(name="distortion", build=build)
