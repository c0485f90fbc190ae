"""TrainingService: validates, converts, and hands off to umbra.classifiers. Internal: the caller holds the
service credential and names the tenant in x-umbra-tenant."""

from __future__ import annotations

import dataclasses
import logging
import re
from importlib.metadata import version as package_version

import torch

from umbra.classifiers import loop
from umbra.classifiers.architectures import IMAGE_SIZES, ModelConfig, create
from umbra.classifiers.data import load_split
from umbra.classifiers.registry import ModelRegistry, StoredModel
from umbra.classifiers.revision import Change, Revision
from umbra.client import inference
from umbra.common.v1 import privacy_pb2
from umbra.inference import publications
from umbra.runtime import auth, pagination
from umbra.runtime.errors import FailedPrecondition, InvalidInput, Unavailable
from umbra.runtime.operations import OperationRunner
from umbra.services.references import dataset_reader, model_ref
from umbra.services.training import convert
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

log = logging.getLogger(__name__)
_MODEL = re.compile(r"^models/([^/]+)$")
_MODEL_VERSION = re.compile(r"^models/([^/]+)/versions/(\d{1,9})$")


def _tenant() -> str:
    return auth.require_tenant("the training service acts for a tenant: name it in x-umbra-tenant")


def _model_id(name: str, field: str) -> str:
    match = _MODEL.match(name)
    if not match:
        raise InvalidInput(field, "must look like 'models/{model}'")
    return keys.validate_resource_id(match.group(1), field)


def _model_version(name: str, field: str) -> tuple[str, int]:
    match = _MODEL_VERSION.match(name)
    if not match or int(match.group(2)) < 1:
        raise InvalidInput(field, "must look like 'models/{model}/versions/{version}'")
    return keys.validate_resource_id(match.group(1), field), int(match.group(2))


def _hyperparameters(h: ts.Hyperparameters, image_size: int) -> tuple[loop.Hyperparameters, int]:
    size = h.image_size or image_size
    if size not in IMAGE_SIZES:
        raise InvalidInput("hyperparameters.image_size", f"must be one of {IMAGE_SIZES}")
    defaults = loop.Hyperparameters()
    return loop.Hyperparameters(
        epochs=h.epochs or defaults.epochs, batch_size=h.batch_size or defaults.batch_size,
        physical_batch_size=h.physical_batch_size or defaults.physical_batch_size,
        learning_rate=h.learning_rate or defaults.learning_rate, optimizer=h.optimizer or defaults.optimizer,
        momentum=h.momentum or defaults.momentum, weight_decay=h.weight_decay,
        schedule=h.schedule or defaults.schedule), size


def _dp(request: ts.TrainRequest) -> loop.DPSettings | None:
    if not request.HasField("differential_privacy"):
        return None
    d = request.differential_privacy
    accountant = {privacy_pb2.PRIVACY_ACCOUNTANT_UNSPECIFIED: "prv", privacy_pb2.PRIVACY_ACCOUNTANT_PRV: "prv",
                  privacy_pb2.PRIVACY_ACCOUNTANT_RDP: "rdp"}.get(d.accountant)
    if accountant is None:
        raise InvalidInput("differential_privacy.accountant", "must be PRV or RDP")
    return loop.DPSettings(target_delta=d.target_delta, target_epsilon=d.target_epsilon,
                           noise_multiplier=d.noise_multiplier, max_grad_norm=d.max_grad_norm or 1.0,
                           poisson_sampling=True, accountant=accountant, secure_mode=d.secure_mode)


def _count(reader: DatasetReader, task: str, split: str) -> int:
    return sum(1 for s in reader.samples() if s.split == split and task in s.labels)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A validated training request, ready to run."""

    bucket: str
    model: str
    reader: DatasetReader
    architecture: str
    hyper: loop.Hyperparameters
    image_size: int
    dp: loop.DPSettings | None
    split: str
    width: int
    start: StoredModel | None = None  # public pretraining: the model version to start from
    revision: tuple[Revision, Change] | None = None  # train on the dataset as revised


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner, *, inference_url: str = "",
                 ready_timeout: float = 60.0):
        self.store = store
        self.registry = ModelRegistry(store)
        self.operations = operations
        self.inference_url = inference_url
        self.ready_timeout = ready_timeout

    def Train(self, request, context):
        tenant = _tenant()
        plan = self._plan(tenant, request)  # every bad setting is refused here, before any compute
        op = self.operations.start(kind="Train", tenant=tenant, metadata=ts.TrainMetadata(),
                                   work=lambda ctx: self._train(ctx, plan, request), request_id=request.request_id,
                                   resume_request=request)
        return ts.TrainResponse(operation=op)

    def resume_train(self, ctx, request_bytes: bytes) -> ts.ModelVersion:
        """After a restart: the same request again; `_train` picks up the run's last checkpoint."""
        request = ts.TrainRequest.FromString(request_bytes)
        return self._train(ctx, self._plan(ctx.tenant, request), request)

    def _plan(self, tenant: str, request: ts.TrainRequest) -> _Plan:
        bucket = keys.bucket(tenant)
        model = _model_id(request.model, "model")
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        if request.task not in reader.header.label_columns:
            raise InvalidInput("task", f"{request.task!r} is not a label column of {request.dataset.dataset} "
                                       f"(it has {', '.join(reader.header.label_columns) or 'none'})")
        architecture = convert.ARCHITECTURES.get(request.architecture or ts.ARCHITECTURE_GROUPNORM_CNN)
        if architecture is None:
            raise InvalidInput("architecture", "is not a known architecture")
        hyper, image_size = _hyperparameters(request.hyperparameters, reader.header.image_size)
        if request.hyperparameters.width < 0 or request.hyperparameters.width > 256:
            raise InvalidInput("hyperparameters.width", "must be between 1 and 256 (0: the default)")
        start = (self._starting_point(bucket, request, architecture, image_size)
                 if request.HasField("initialize_from") else None)
        width = request.hyperparameters.width or (start.config.width if start else ModelConfig.width)
        if start is not None and width != start.config.width:
            raise InvalidInput("hyperparameters.width", f"is {width}, but initialize_from has width "
                                                        f"{start.config.width}")
        if request.hyperparameters.augmentation_multiplicity > 1:
            raise InvalidInput("hyperparameters.augmentation_multiplicity", "is not supported yet: leave it 0 or 1")
        dp = _dp(request)
        split = request.dataset.split or "train"
        revision = self._revision(bucket, reader, request, split) if request.HasField("revision") else None
        n = revision[1].revised_size if revision else _count(reader, request.task, split)
        if n == 0:
            raise InvalidInput("dataset.split", f"split {split!r} has no samples labelled with {request.task!r}")
        loop.validate(data_size=n, hyper=hyper, dp=dp)
        return _Plan(bucket, model, reader, architecture, hyper, image_size, dp, split, width, start, revision)

    def _revision(self, bucket: str, reader: DatasetReader, request: ts.TrainRequest, split: str
                  ) -> tuple[Revision, Change]:
        revised = (dataset_reader(self.store, bucket, request.revision.revised, "revision.revised")
                   if request.revision.HasField("revised") else None)
        revision = Revision.plan(reader, revised=revised, removed=request.revision.removed_keys, field="revision")
        return revision, revision.change(task=request.task, split=split)

    def _starting_point(self, bucket: str, request: ts.TrainRequest, architecture: str, image_size: int) -> StoredModel:
        """The model version to start from (public pretraining): same architecture and image size, and never
        trained on the dataset being trained on now (its weights would not be public for this run)."""
        model_id, number = model_ref(request.initialize_from, "initialize_from")
        start = self.registry.get(bucket, model_id, number, field="initialize_from")
        if start.config.architecture != architecture or start.config.image_size != image_size:
            raise InvalidInput("initialize_from", f"models/{model_id}/versions/{number} is a "
                                                  f"{start.config.architecture} at {start.config.image_size} px; "
                                                  f"this run trains a {architecture} at {image_size} px")
        if start.record.get("dataset", {}).get("dataset") == request.dataset.dataset:
            raise InvalidInput("initialize_from", f"models/{model_id}/versions/{number} was trained on "
                                                  f"{request.dataset.dataset} itself: start from a model trained "
                                                  f"on public data")
        return start

    def _train(self, ctx, plan: _Plan, request: ts.TrainRequest) -> ts.ModelVersion:
        bucket, model_id, reader, hyper, dp = plan.bucket, plan.model, plan.reader, plan.hyper, plan.dp
        ctx.report(stage="loading data")
        if plan.revision is not None:
            revision, change = plan.revision
            data = revision.load(change, image_size=plan.image_size)
        else:
            data = load_split(reader, task=request.task, split=plan.split, image_size=plan.image_size)
        ctx.check_cancelled()
        config = ModelConfig(plan.architecture, len(data.classes), plan.image_size, classes=data.classes,
                             width=plan.width, mirror_average=request.hyperparameters.mirror_average)
        torch.manual_seed(request.seed)
        model = create(config)
        if plan.start is not None:
            self._load_starting_point(model, config, plan)
        run = ctx.name.removeprefix("operations/")
        rate = loop.poisson_rate(len(data), hyper.batch_size)
        saved = self.registry.latest_checkpoint(bucket, model_id, run)
        resume = loop.Checkpoint(**saved) if saved else None
        if resume is not None:
            log.info("resuming %s from its epoch-%d checkpoint", ctx.name, resume.epoch)

        def on_epoch(report: loop.EpochReport, checkpoint: loop.Checkpoint) -> None:
            key = self.registry.save_checkpoint(bucket, model_id, run, report.epoch, dataclasses.asdict(checkpoint))
            ctx.metadata.epoch, ctx.metadata.loss = report.epoch, report.loss
            ctx.metadata.checkpoint.bucket, ctx.metadata.checkpoint.key = bucket, key
            spent = (convert.privacy_cost(report.epsilon, dp.target_delta, report.accountant,
                                          checkpoint.noise_multiplier, rate, report.steps) if dp else None)
            ctx.report(stage="training", done=report.epoch, total=report.epochs, unit="epochs",
                       message=f"loss {report.loss:.4f}" + (f", epsilon {report.epsilon:.3f}" if dp else ""),
                       privacy_spent=spent)

        result = loop.train(model=model, data=data, hyper=hyper, dp=dp, seed=request.seed, on_epoch=on_epoch,
                            resume=resume, should_stop=lambda: ctx.cancelled)
        ctx.check_cancelled()
        inner = model._module if hasattr(model, "_module") else model
        metrics = {"train_loss": result.final_loss}
        try:
            val = load_split(reader, task=request.task, split="val", image_size=plan.image_size, classes=data.classes)
            metrics["val_accuracy"] = float((loop.predict(inner, val) == val.labels).float().mean())
        except InvalidInput:
            pass  # no validation split
        record = {
            "dataset": {"dataset": request.dataset.dataset, "version": request.dataset.version, "split": plan.split},
            "task": request.task, "classes": data.classes, "seed": request.seed, "steps": result.steps,
            "metrics": metrics, "code_version": package_version("umbra"),
            "hyperparameters": {"epochs": hyper.epochs, "batch_size": hyper.batch_size,
                                "physical_batch_size": hyper.physical_batch_size,
                                "learning_rate": hyper.learning_rate, "optimizer": hyper.optimizer,
                                "momentum": hyper.momentum, "weight_decay": hyper.weight_decay,
                                "image_size": plan.image_size, "width": plan.width,
                                "mirror_average": request.hyperparameters.mirror_average,
                                "schedule": hyper.schedule},
            "initialized_from": self._lineage(plan.start),
            "revision": plan.revision[0].describe() if plan.revision else None,
            "privacy": ({"epsilon": result.epsilon, "delta": result.delta, "accountant": result.accountant,
                         "noise_multiplier": result.noise_multiplier, "sample_rate": rate,
                         "steps": result.steps, "max_grad_norm": dp.max_grad_norm} if dp else None),
        }
        ctx.report(stage="writing model")
        version = self.registry.write(bucket, model_id, config, inner.state_dict(), record)
        log.info("model %s v%d written (epsilon %.3f)", model_id, version, result.epsilon)
        return convert.model_version_to_proto(self.registry.get(bucket, model_id, version), bucket)

    def _load_starting_point(self, model: torch.nn.Module, config: ModelConfig, plan: _Plan) -> None:
        """Every weight of the starting point, except a head whose classes differ (it starts fresh)."""
        start = plan.start
        weights = self.registry.weights(plan.bucket, start.model, start.version)
        if start.config.classes != config.classes:
            weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise InvalidInput("initialize_from", f"the weights of models/{start.model}/versions/{start.version} "
                                                  f"do not fit this architecture")

    @staticmethod
    def _lineage(start: StoredModel | None) -> dict | None:
        if start is None:
            return None
        return {"model": f"models/{start.model}", "version": start.version, "dataset": start.record.get("dataset"),
                "task": start.record.get("task"), "privacy": start.record.get("privacy")}

    def ExportModelVersion(self, request, context):
        """Publishes a model version to the inference server and returns once Triton serves it."""
        tenant = _tenant()
        bucket = keys.bucket(tenant)
        model_id, number = model_ref(request.model, "model")
        served = request.served_model_name or model_id
        keys.validate_resource_id(served, "served_model_name")
        if not self.inference_url:
            raise FailedPrecondition("no inference server is configured for this service (UMBRA_INFERENCE_URL)")
        self.registry.get(bucket, model_id, number)  # NotFound, also for another tenant's model
        publication = publications.publish(self.store, tenant, served, model_id, number)
        if not inference.wait_until_ready(self.inference_url, publication.triton_name, self.ready_timeout):
            raise Unavailable(f"the inference server at {self.inference_url} did not load "
                              f"{publication.triton_name} within {self.ready_timeout:.0f} s; the publication is "
                              f"recorded and will be served when it does (see the inference server's log)")
        return ts.ExportModelVersionResponse(served_model_name=publication.triton_name, endpoint=self.inference_url)

    def Evaluate(self, request, context):
        tenant = _tenant()
        bucket = keys.bucket(tenant)
        model_id, number = model_ref(request.model, "model")
        stored = self.registry.get(bucket, model_id, number)
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        split = request.dataset.split or "test"

        def work(ctx) -> ts.Evaluation:
            ctx.report(stage="loading data")
            data = load_split(reader, task=stored.record["task"], split=split, image_size=stored.config.image_size,
                              classes=stored.config.classes)
            model = create(stored.config)
            model.load_state_dict(self.registry.weights(bucket, model_id, stored.version))
            ctx.report(stage="predicting", total=len(data), unit="images")
            predicted = loop.predict(model, data)
            return _evaluation(request, data.classes, predicted, data.labels)

        op = self.operations.start(kind="Evaluate", tenant=tenant, metadata=ts.EvaluateMetadata(), work=work,
                                   request_id=request.request_id)
        return ts.EvaluateResponse(operation=op)

    def GetModelVersion(self, request, context):
        tenant = _tenant()
        model_id, number = _model_version(request.name, "name")
        bucket = keys.bucket(tenant)
        return ts.GetModelVersionResponse(
            model_version=convert.model_version_to_proto(self.registry.get(bucket, model_id, number, kind=None),
                                                         bucket))

    def ListModelVersions(self, request, context):
        tenant = _tenant()
        bucket = keys.bucket(tenant)
        model = None if request.parent in ("", "models/-") else _model_id(request.parent, "parent")
        size = pagination.page_size(request.page_size)
        after = pagination.decode_token(request.page_token, request.parent) or ""
        names = [(m, v) for m, v in self.registry.versions(bucket, model) if f"{m}/{v:09d}" > after]
        response = ts.ListModelVersionsResponse(model_versions=[
            convert.model_version_to_proto(self.registry.get(bucket, m, v, kind=None), bucket)
            for m, v in names[:size]])
        if len(names) > size:
            m, v = names[size - 1]
            response.next_page_token = pagination.encode_token(f"{m}/{v:09d}", request.parent)
        return response

    def DeleteModelVersion(self, request, context):
        tenant = _tenant()
        model_id, number = _model_version(request.name, "name")
        self.registry.delete(keys.bucket(tenant), model_id, number)
        return ts.DeleteModelVersionResponse()



def _evaluation(request, classes: list[str], predicted: torch.Tensor, labels: torch.Tensor) -> ts.Evaluation:
    evaluation = ts.Evaluation(model=request.model, dataset=request.dataset, sample_count=len(labels),
                               accuracy=float((predicted == labels).float().mean()))
    recalls = []
    for index, name in enumerate(classes):
        actual, chosen = labels == index, predicted == index
        hits = int((actual & chosen).sum())
        recall = hits / int(actual.sum()) if int(actual.sum()) else 0.0
        precision = hits / int(chosen.sum()) if int(chosen.sum()) else 0.0
        if int(actual.sum()):
            recalls.append(recall)
        evaluation.per_class.add(class_name=name, precision=precision, recall=recall, support=int(actual.sum()))
    evaluation.balanced_accuracy = sum(recalls) / len(recalls) if recalls else 0.0
    return evaluation
