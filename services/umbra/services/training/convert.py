"""The training service's protobuf conversions (the only place its messages and umbra.classifiers meet)."""

from __future__ import annotations

from umbra.classifiers import evaluation as ev
from umbra.classifiers import loop
from umbra.classifiers.catalog import CONFIG, RECORD, WEIGHTS, StoredModel, version_prefix
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.privacy.dp_sgd import ACCOUNTANTS, DPSettings
from umbra.privacy.mechanisms import dp_sgd_cost
from umbra.runtime.errors import InvalidInput
from umbra.services.convert import accountant_from_proto, privacy_cost_to_proto
from umbra.training.v1 import training_service_pb2 as ts

def architecture_from_proto(value: int) -> str:
    """ARCHITECTURE_GROUPNORM_CNN -> "groupnorm_cnn" (unspecified: the default, groupnorm_cnn)."""
    if value == ts.ARCHITECTURE_UNSPECIFIED:
        return "groupnorm_cnn"
    if value not in ts.Architecture.values():
        raise InvalidInput("architecture", "is not a known architecture")
    return ts.Architecture.Name(value).removeprefix("ARCHITECTURE_").lower()


def architecture_to_proto(name: str) -> int:
    key = f"ARCHITECTURE_{name.upper()}"
    return ts.Architecture.Value(key) if key in ts.Architecture.keys() else ts.ARCHITECTURE_UNSPECIFIED


def hyperparameters_from_proto(h: ts.Hyperparameters) -> loop.Hyperparameters:
    """Zero is the documented default."""
    if h.augmentation_multiplicity not in (0, 1):
        raise InvalidInput("hyperparameters.augmentation_multiplicity", "is not supported yet: leave it 0 or 1")
    d = loop.Hyperparameters()
    return loop.Hyperparameters(
        epochs=h.epochs or d.epochs, batch_size=h.batch_size or d.batch_size,
        physical_batch_size=h.physical_batch_size or d.physical_batch_size,
        learning_rate=h.learning_rate or d.learning_rate, optimizer=h.optimizer or d.optimizer,
        momentum=h.momentum or d.momentum, weight_decay=h.weight_decay, schedule=h.schedule or d.schedule)


def dp_from_proto(request: ts.TrainRequest) -> DPSettings | None:
    if not request.HasField("differential_privacy"):
        return None
    d = request.differential_privacy
    accountant = accountant_from_proto(d.accountant, "differential_privacy.accountant", allowed=ACCOUNTANTS,
                                       default="prv")
    return DPSettings(target_delta=d.target_delta, target_epsilon=d.target_epsilon,
                      noise_multiplier=d.noise_multiplier, max_grad_norm=d.max_grad_norm or 1.0,
                      poisson_sampling=True, accountant=accountant, secure_mode=d.secure_mode)


def privacy_spent_to_proto(privacy: dict) -> privacy_pb2.PrivacyCost:
    """A training record's "privacy" (umbra.classifiers.job) as the DP-SGD cost it is."""
    return privacy_cost_to_proto(dp_sgd_cost(privacy, "classifier training (DP-SGD)"))


def evaluation_to_proto(evaluation: ev.Evaluation, request: ts.EvaluateRequest) -> ts.Evaluation:
    return ts.Evaluation(
        model=request.model, dataset=request.dataset, sample_count=evaluation.sample_count,
        accuracy=evaluation.accuracy, balanced_accuracy=evaluation.balanced_accuracy,
        per_class=[ts.ClassMetrics(class_name=c.name, precision=c.precision, recall=c.recall, support=c.support)
                   for c in evaluation.per_class])


def model_version_to_proto(stored: StoredModel, bucket: str) -> ts.ModelVersion:
    record = stored.record
    prefix = version_prefix(stored.model, stored.version)
    version = ts.ModelVersion(
        name=f"models/{stored.model}/versions/{stored.version}", state=ts.ModelVersion.STATE_READY,
        weights=refs_pb2.ObjectRef(bucket=bucket, key=prefix + WEIGHTS),
        config=refs_pb2.ObjectRef(bucket=bucket, key=prefix + CONFIG),
        record=refs_pb2.ObjectRef(bucket=bucket, key=prefix + RECORD))
    training = version.training_record
    training.MergeFrom(ts.TrainingRecord(dataset=refs_pb2.DatasetRef(**record["dataset"]), seed=record["seed"],
                                         steps=record["steps"], code_version=record["code_version"],
                                         processes=record.get("processes") or 1))
    if stored.kind == "generator":  # the anonymizer's: its record has no classifier hyperparameters
        training.task = "generator"
        training.classes.extend(stored.config.classes)
        return version
    training.MergeFrom(ts.TrainingRecord(
        task=record["task"], classes=record["classes"], metrics=record["metrics"],
        architecture=architecture_to_proto(stored.config.architecture),
        hyperparameters=ts.Hyperparameters(**record["hyperparameters"])))
    start = record.get("initialized_from")
    if start:
        training.initialized_from.CopyFrom(refs_pb2.ModelRef(model=start["model"], version=start["version"]))
    if record.get("privacy"):
        training.privacy_cost.CopyFrom(privacy_spent_to_proto(record["privacy"]))
    return version
