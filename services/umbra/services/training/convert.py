"""Training records and evaluations to protobuf (the only place the two meet)."""

from __future__ import annotations

from umbra.classifiers.registry import CONFIG, RECORD, WEIGHTS, StoredModel, version_prefix
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.training.v1 import training_service_pb2 as ts

ARCHITECTURES = {
    ts.ARCHITECTURE_GROUPNORM_CNN: "groupnorm_cnn",
    ts.ARCHITECTURE_SMALL_RESNET: "small_resnet",
    ts.ARCHITECTURE_SCATTERNET_LINEAR: "scatternet_linear",
    ts.ARCHITECTURE_SCATTERNET_CNN: "scatternet_cnn",
}
ACCOUNTANTS = {"prv": privacy_pb2.PRIVACY_ACCOUNTANT_PRV, "rdp": privacy_pb2.PRIVACY_ACCOUNTANT_RDP}


def privacy_cost(epsilon: float, delta: float, accountant: str, noise_multiplier: float, sample_rate: float,
                 steps: int, max_grad_norm: float | None = None) -> privacy_pb2.PrivacyCost:
    parameters = {"noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "steps": float(steps)}
    if max_grad_norm is not None:  # recorded since the unlearning service retrains DP models the same way
        parameters["max_grad_norm"] = max_grad_norm
    return privacy_pb2.PrivacyCost(
        mechanism=privacy_pb2.PRIVACY_MECHANISM_DP_SGD, accountant=ACCOUNTANTS.get(accountant, 0),
        epsilon=epsilon, delta=delta, description="classifier training (DP-SGD)", parameters=parameters)


def retrain_request(stored: StoredModel, *, model: str, revision: refs_pb2.DatasetRevision, request_id: str
                    ) -> ts.TrainRequest:
    """The TrainRequest that trains `stored` again from scratch (same data, recipe, seed, starting point and DP
    noise) on its dataset as revised, into `model` ("models/{model}")."""
    record, config = stored.record, stored.config
    hyper = dict(record["hyperparameters"])
    request = ts.TrainRequest(
        model=model, dataset=refs_pb2.DatasetRef(**record["dataset"]), task=record["task"],
        architecture={v: k for k, v in ARCHITECTURES.items()}[config.architecture],
        hyperparameters=ts.Hyperparameters(**hyper), seed=record["seed"], request_id=request_id, revision=revision)
    start = record.get("initialized_from")
    if start:
        request.initialize_from.CopyFrom(refs_pb2.ModelRef(model=start["model"], version=start["version"]))
    privacy = record.get("privacy")
    if privacy:
        accountant = ACCOUNTANTS.get(privacy["accountant"], privacy_pb2.PRIVACY_ACCOUNTANT_RDP)
        request.differential_privacy.CopyFrom(ts.DifferentialPrivacy(
            target_delta=privacy["delta"], noise_multiplier=privacy["noise_multiplier"],
            max_grad_norm=privacy.get("max_grad_norm", 1.0), accountant=accountant))
    return request


def model_version_to_proto(stored: StoredModel, bucket: str) -> ts.ModelVersion:
    record = stored.record
    prefix = version_prefix(stored.model, stored.version)
    if stored.kind == "generator":  # the anonymizer's: its record has no classifier hyperparameters
        return ts.ModelVersion(
            name=f"models/{stored.model}/versions/{stored.version}", state=ts.ModelVersion.STATE_READY,
            weights=refs_pb2.ObjectRef(bucket=bucket, key=prefix + WEIGHTS),
            config=refs_pb2.ObjectRef(bucket=bucket, key=prefix + CONFIG),
            record=refs_pb2.ObjectRef(bucket=bucket, key=prefix + RECORD),
            training_record=ts.TrainingRecord(dataset=refs_pb2.DatasetRef(**record["dataset"]), task="generator",
                                              classes=list(stored.config.classes), seed=record["seed"],
                                              steps=record["steps"], code_version=record["code_version"]))
    training = ts.TrainingRecord(
        dataset=refs_pb2.DatasetRef(**record["dataset"]), task=record["task"], classes=record["classes"],
        architecture={v: k for k, v in ARCHITECTURES.items()}.get(stored.config.architecture, 0),
        hyperparameters=ts.Hyperparameters(**record["hyperparameters"]), seed=record["seed"],
        steps=record["steps"], metrics=record["metrics"], code_version=record["code_version"])
    start = record.get("initialized_from")
    if start:
        training.initialized_from.CopyFrom(refs_pb2.ModelRef(model=start["model"], version=start["version"]))
    privacy = record.get("privacy")
    if privacy:
        training.privacy_cost.CopyFrom(privacy_cost(**privacy))
    return ts.ModelVersion(
        name=f"models/{stored.model}/versions/{stored.version}", state=ts.ModelVersion.STATE_READY,
        weights=refs_pb2.ObjectRef(bucket=bucket, key=prefix + WEIGHTS),
        config=refs_pb2.ObjectRef(bucket=bucket, key=prefix + CONFIG),
        record=refs_pb2.ObjectRef(bucket=bucket, key=prefix + RECORD), training_record=training)
