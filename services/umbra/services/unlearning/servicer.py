"""UnlearningService: feature unlearning of a trained classifier (first and second order) onto revised or
removed training samples, verified on request against retraining from scratch through the training service.
Validates and converts; the work is umbra.feature_unlearning. Internal: the caller holds the service credential
and names the tenant in x-umbra-tenant."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
import uuid
from importlib.metadata import version as package_version


from umbra.classifiers.architectures import create
from umbra.classifiers.data import load_keys
from umbra.classifiers.registry import ModelRegistry, StoredModel
from umbra.classifiers.revision import Change, Revision
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.operations import OperationsClient, call
from umbra.common.v1 import refs_pb2
from umbra.feature_unlearning import updates, verification
from umbra.feature_unlearning.classifier import trainable
from umbra.runtime import auth
from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.errors import FailedPrecondition, InvalidInput, Unavailable
from umbra.runtime.operations import OperationRunner
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.services.references import dataset_reader, model_ref
from umbra.services.training import convert
from umbra.storage import keys, open_store
from umbra.storage.base import ObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc
from umbra.unlearning.v1 import unlearning_service_pb2 as us
from umbra.unlearning.v1 import unlearning_service_pb2_grpc

log = logging.getLogger(__name__)
KIND = "Unlearn"
_METHODS = {us.METHOD_FIRST_ORDER: "first_order", us.METHOD_SECOND_ORDER: "second_order"}
POOL = 256  # kept training samples (one random view each) for the Hessian's batches and the objective's estimate
RETRAINED_SUFFIX = "-retrained"
DP_NOTE = ("the model was trained with DP-SGD; its epsilon covers that training only: this update reads the "
           "changed samples without noise and is not covered by it")


def _tenant() -> str:
    return auth.require_tenant("the unlearning service acts for a tenant: name it in x-umbra-tenant")


def _number(value: float, field: str, *, low: float = 0.0, high: float = math.inf) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidInput(field, f"must be a number in [{low:g}, {high:g}]")
    return value


def _settings(request: us.UnlearnRequest) -> updates.Settings:
    """The update's settings: zero means the documented default (the automatic choice for tau and scale)."""
    if request.method not in _METHODS:
        raise InvalidInput("method", "choose METHOD_FIRST_ORDER or METHOD_SECOND_ORDER")
    given, default = request.lissa, updates.Lissa()
    lissa = updates.Lissa(
        damping=_number(given.damping, "lissa.damping", high=0.99) or default.damping,
        scale=_number(given.scale, "lissa.scale"),
        depth=int(_number(given.depth, "lissa.depth", high=10_000)) or default.depth,
        patience=int(_number(given.patience, "lissa.patience", high=10_000)) or default.patience,
        batch_size=int(_number(given.batch_size, "lissa.batch_size", high=4096)) or default.batch_size)
    return updates.Settings(method=_METHODS[request.method], tau=_number(request.tau, "tau"), lissa=lissa)


@dataclasses.dataclass(frozen=True)
class _Job:
    """A validated Unlearn request, ready to run."""

    bucket: str
    source: StoredModel
    revision: Revision
    change: Change
    settings: updates.Settings
    output_model: str
    request: us.UnlearnRequest


class UnlearningServicer(unlearning_service_pb2_grpc.UnlearningServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner, *, training_url: str, service_token: str):
        self.store = store
        self.registry = ModelRegistry(store)
        self.operations = operations
        self.training_url = training_url
        self.service_token = service_token

    def Unlearn(self, request, context):
        tenant = _tenant()
        job = self._plan(tenant, request)  # every bad input is refused here, before any compute
        op = self.operations.start(kind=KIND, tenant=tenant, metadata=us.UnlearnMetadata(),
                                   work=lambda ctx: self._run(ctx, job), request_id=request.request_id,
                                   resume_request=request)
        return us.UnlearnResponse(operation=op)

    def resume(self, ctx, request_bytes: bytes) -> us.UnlearningResult:
        """After a restart: the same request again (the update is recomputed; it takes seconds)."""
        request = us.UnlearnRequest.FromString(request_bytes)
        return self._run(ctx, self._plan(ctx.tenant, request))

    def _plan(self, tenant: str, request: us.UnlearnRequest) -> _Job:
        bucket = keys.bucket(tenant)
        model_id, number = model_ref(request.model, "model")
        source = self.registry.get(bucket, model_id, number, field="model")  # NOT_FOUND for another tenant's
        original = dataset_reader(self.store, bucket, request.original, "original")
        trained = source.record["dataset"]
        if (trained.get("dataset"), trained.get("version")) != (request.original.dataset, request.original.version):
            raise InvalidInput("original", f"models/{model_id}/versions/{number} was trained on "
                                           f"{trained.get('dataset')} version {trained.get('version')}, not "
                                           f"{request.original.dataset} version {request.original.version}")
        which = request.revision.WhichOneof("change")
        if which is None:
            raise InvalidInput("revision", "give a revised dataset version (revised) or keys to remove (removed)")
        revised = None
        if which == "revised":
            revised = dataset_reader(self.store, bucket, request.revision.revised, "revision.revised")
            if (revised.dataset, revised.version) == (original.dataset, original.version):
                raise InvalidInput("revision.revised", "is the original version itself: nothing is revised")
        elif not request.revision.removed.keys:
            raise InvalidInput("revision.removed.keys", "is empty: name the samples to remove")
        revision = Revision.plan(original, revised=revised, removed=request.revision.removed.keys, field="revision",
                                 removed_field="revision.removed.keys")
        change = revision.change(task=source.record["task"], split=trained.get("split") or "train",
                                 classes=list(source.config.classes))
        if not change.changed:
            raise InvalidInput("revision", f"changes none of the {len(change.kept)} samples models/{model_id}/"
                                           f"versions/{number} was trained on (split {change.split!r})")
        settings = _settings(request)
        output = request.output_model or f"models/{model_id}"
        if not output.startswith("models/"):
            raise InvalidInput("output_model", "must look like 'models/{model}'")
        output = keys.validate_resource_id(output.removeprefix("models/"), "output_model")
        if request.verify:
            self._check_verifiable(request, source, original, output)
        return _Job(bucket, source, revision, change, settings, output, request)

    @staticmethod
    def _check_verifiable(request: us.UnlearnRequest, source: StoredModel, original, output: str) -> None:
        keys.validate_resource_id(output + RETRAINED_SUFFIX, "output_model")  # the retrained model's id must fit
        task, probe = source.record["task"], request.probe_attribute
        if not probe:
            raise InvalidInput("probe_attribute", "is required with verify: the protected attribute the leakage "
                                                  "probe predicts")
        if probe == task:
            raise InvalidInput("probe_attribute", f"is the model's own task ({task!r}): name a protected attribute")
        if probe not in original.header.label_columns:
            raise InvalidInput("probe_attribute", f"{probe!r} is not a label column of the original version (it "
                                                  f"has {', '.join(original.header.label_columns)})")
        values: dict[str, int] = {}
        for sample in original.samples():
            if sample.split == "test" and task in sample.labels and probe in sample.labels:
                values[sample.labels[probe]] = values.get(sample.labels[probe], 0) + 1
        if len(values) < 2 or min(values.values()) < 2:
            raise InvalidInput("verify", f"the original version's test split needs at least two samples of two "
                                         f"values of {probe!r} labelled with {task!r} (it has {values or 'none'})")

    def _run(self, ctx, job: _Job) -> us.UnlearningResult:
        started = time.perf_counter()
        source, change, revision = job.source, job.change, job.revision
        size = source.config.image_size
        ctx.report(stage="loading the model")
        model = create(source.config)
        model.load_state_dict(self.registry.weights(job.bucket, source.model, source.version))
        objective, points = trainable(model)
        ctx.report(stage=f"loading images ({len(change.replaced)} revised, {len(change.removed)} removed)")
        seed = source.record.get("seed", 0)
        sampled = random.Random(seed).sample(sorted(change.kept), min(POOL, len(change.kept)))
        changed = change.replaced | change.removed
        # one pass over the original version: the changed samples as the model saw them, and the pool
        read = load_keys(revision.original, changed | {k: change.kept[k] for k in sampled}, image_size=size,
                         classes=change.classes)
        originals = points(read.take([k in changed for k in read.keys]))
        pool = points(read.take([k not in changed for k in read.keys]), seed=seed)
        replacements = points(revision.load_replacements(change, image_size=size))
        ctx.check_cancelled()
        try:
            update = updates.unlearn(objective, originals=originals, replacements=replacements, pool=pool,
                                     kept=len(change.kept), settings=job.settings, seed=seed,
                                     progress=lambda stage: ctx.report(stage=stage))
        except updates.Diverged as exc:
            raise FailedPrecondition(
                f"the {job.settings.method.replace('_', '-')} update was refused: {exc}. "
                f"models/{source.model}/versions/{source.version} is unchanged and no version was written",
                reason="UNLEARNING_DIVERGED", metadata={k: f"{v:.6g}" for k, v in exc.measured.items()}) from None
        seconds = time.perf_counter() - started
        ctx.metadata.gradient_evaluations = update.gradient_evaluations
        ctx.report(stage="writing model")
        version = self.registry.write(job.bucket, job.output_model, source.config, model.state_dict(),
                                      self._record(job, update, seconds))
        log.info("unlearned models/%s/versions/%d into models/%s/versions/%d (%s, tau %.4g, %.1f s)", source.model,
                 source.version, job.output_model, version, job.settings.method, update.tau, seconds)
        result = us.UnlearningResult(
            unlearned=refs_pb2.ModelRef(model=f"models/{job.output_model}", version=version),
            gradient_evaluations=update.gradient_evaluations, seconds=seconds,
            outside_original_privacy_guarantee=bool(source.record.get("privacy")), tau=update.tau,
            lissa_scale=update.scale, update_norm=update.update_norm, changed_samples=len(change.replaced),
            removed_samples=len(change.removed), loss_before=update.loss_before, loss_after=update.loss_after)
        if job.request.verify:
            result.verification.CopyFrom(self._verify(ctx, job, model))
        return result

    @staticmethod
    def _record(job: _Job, update: updates.Update, seconds: float) -> dict:
        source, change, settings = job.source, job.change, job.settings
        record = {key: value for key, value in source.record.items() if key != "metrics"}
        record.update(code_version=package_version("umbra"), revision=job.revision.describe(),
                      metrics={"revised_train_loss": update.loss_after})
        record["unlearning"] = {
            "method": settings.method, "tau": update.tau, "tau_automatic": not settings.tau,
            "lissa": ({**dataclasses.asdict(settings.lissa), "scale": update.scale, "scales_tried":
                       list(update.scales_tried), "iterations": update.iterations}
                      if settings.method == "second_order" else None),
            "gradient_evaluations": update.gradient_evaluations, "seconds": seconds,
            "source": {"model": f"models/{source.model}", "version": source.version},
            "revision": job.revision.describe(), "changed_samples": len(change.replaced),
            "removed_samples": len(change.removed), "training_samples_after": change.revised_size,
            "update_norm": update.update_norm, "parameter_norm": update.parameter_norm,
            "loss_before": update.loss_before, "loss_after": update.loss_after,
            "privacy": DP_NOTE if source.record.get("privacy") else None,
        }
        return record

    def _verify(self, ctx, job: _Job, unlearned) -> us.Verification:
        """Retrains from scratch on the revised data through the training service (same recipe, seed, starting
        point and DP noise) and compares the three models on the original version's test split."""
        source, request = job.source, job.request
        revision = (refs_pb2.DatasetRevision(revised=request.revision.revised) if job.revision.revised is not None
                    else refs_pb2.DatasetRevision(removed_keys=request.revision.removed.keys))
        train = convert.retrain_request(source, model=f"models/{job.output_model}{RETRAINED_SUFFIX}",
                                        revision=revision, request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, ctx.name)))
        ctx.report(stage="retraining from scratch (training service)")
        channel = open_channel(self.training_url, self.service_token, tenant=ctx.tenant)
        started = time.perf_counter()
        try:
            op = call(training_service_pb2_grpc.TrainingServiceStub(channel).Train, train, timeout=60)
            retrained_version = OperationsClient(channel).result(op.operation.name, ts.ModelVersion, poll_seconds=2)
        except (UmbraRpcError, OperationFailed) as exc:
            raise Unavailable(f"verification: retraining through the training service at {self.training_url} "
                              f"failed ({exc}); the unlearned version is written") from None
        finally:
            channel.close()
        retrain_seconds = time.perf_counter() - started
        model_id, number = retrained_version.name.removeprefix("models/").split("/versions/")
        if list(retrained_version.training_record.classes) != list(source.config.classes):
            raise FailedPrecondition(f"verification: the revised data has the classes "
                                     f"{list(retrained_version.training_record.classes)}, the model "
                                     f"{list(source.config.classes)}: their predictions cannot be compared; the "
                                     f"unlearned version is written", reason="CLASSES_DIFFER")
        retrained = create(source.config)
        retrained.load_state_dict(self.registry.weights(job.bucket, model_id, int(number)))
        original = create(source.config)
        original.load_state_dict(self.registry.weights(job.bucket, source.model, source.version))

        ctx.report(stage="comparing with the retrained model")
        task, probe = source.record["task"], request.probe_attribute
        test, protected = verification.probe_set(job.revision.original, task=task, attribute=probe,
                                                 image_size=source.config.image_size,
                                                 classes=list(source.config.classes))
        compared = verification.compare({"original": original, "unlearned": unlearned, "retrained": retrained},
                                        test, protected, reference="retrained")
        return us.Verification(
            accuracy_original=compared["accuracy"]["original"], accuracy_unlearned=compared["accuracy"]["unlearned"],
            accuracy_retrained=compared["accuracy"]["retrained"],
            agreement_with_retrained=compared["agreement"]["unlearned"],
            parameter_distance=compared["parameter_distance"]["unlearned"],
            probe_balanced_accuracy=compared["probe_balanced_accuracy"], retrain_seconds=retrain_seconds,
            retrained=refs_pb2.ModelRef(model=f"models/{model_id}", version=int(number)), test_count=len(test))


def build(runtime: Runtime) -> Built:
    servicer = UnlearningServicer(open_store(runtime.config.store), runtime.operations,
                                  training_url=runtime.config.training_url,
                                  service_token=runtime.config.service_token)
    runtime.operations.register_resumer(KIND, servicer.resume)
    return Built(
        registrations=[registration(us, unlearning_service_pb2_grpc, "UnlearningService", servicer)],
        authenticator=ServiceAuthenticator(runtime.config.service_token),
    )


SPEC = ServiceSpec(name="unlearning", build=build)
