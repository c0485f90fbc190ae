"""The unlearning service's protobuf conversions (the only place its messages and umbra.feature_unlearning meet),
and the training service's TrainRequest that retrains a model from scratch for a comparison."""

from __future__ import annotations

import math
from umbra.classifiers.catalog import StoredModel

from umbra.common.v1 import refs_pb2
from umbra.feature_unlearning import updates
from umbra.feature_unlearning.job import Result
from umbra.runtime.errors import InvalidInput
from umbra.services.convert import accountant_to_proto
from umbra.training.v1 import training_service_pb2 as ts
from umbra.unlearning.v1 import unlearning_service_pb2 as us

_METHODS = {us.METHOD_FIRST_ORDER: "first_order", us.METHOD_SECOND_ORDER: "second_order"}
# The ranges of an UnlearnRequest's numbers; 0 is the default (the automatic choice for tau and scale).
MAX_TAU = 1e9  # the automatic search tries tau·n up to 1e4; a diverging tau is refused by the update itself
MAX_LISSA_DAMPING = 0.99
MAX_LISSA_SCALE = 1e10  # the automatic scale tries up to 1e9 (umbra.feature_unlearning.updates.SCALES)
MAX_LISSA_DEPTH = 10_000
MAX_LISSA_PATIENCE = 10_000
MAX_LISSA_BATCH_SIZE = 4096


def _number(value: float, field: str, *, low: float = 0.0, high: float = math.inf) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidInput(field, f"must be a number in [{low:g}, {high:g}]")
    return value


def settings_from_proto(request: us.UnlearnRequest) -> updates.Settings:
    """The update's settings: zero means the documented default (the automatic choice for tau and scale)."""
    if request.method not in _METHODS:
        raise InvalidInput("method", "choose METHOD_FIRST_ORDER or METHOD_SECOND_ORDER")
    given, default = request.lissa, updates.Lissa()
    lissa = updates.Lissa(
        damping=_number(given.damping, "lissa.damping", high=MAX_LISSA_DAMPING) or default.damping,
        scale=_number(given.scale, "lissa.scale", high=MAX_LISSA_SCALE),
        depth=int(_number(given.depth, "lissa.depth", high=MAX_LISSA_DEPTH)) or default.depth,
        patience=int(_number(given.patience, "lissa.patience", high=MAX_LISSA_PATIENCE)) or default.patience,
        batch_size=(int(_number(given.batch_size, "lissa.batch_size", high=MAX_LISSA_BATCH_SIZE))
                    or default.batch_size))
    return updates.Settings(method=_METHODS[request.method], tau=_number(request.tau, "tau", high=MAX_TAU),
                            lissa=lissa)


def result_to_proto(result: Result, output_model: str, source: StoredModel) -> us.UnlearningResult:
    update, unlearning = result.update, result.record["unlearning"]
    return us.UnlearningResult(
        unlearned=refs_pb2.ModelRef(model=f"models/{output_model}", version=result.version),
        gradient_evaluations=update.gradient_evaluations, seconds=result.seconds,
        outside_original_privacy_guarantee=bool(source.record.get("privacy")), tau=update.tau,
        lissa_scale=update.scale, update_norm=update.update_norm, changed_samples=unlearning["changed_samples"],
        removed_samples=unlearning["removed_samples"], loss_before=update.loss_before, loss_after=update.loss_after)


def verification_to_proto(compared: dict, test_count: int, retrained: tuple[str, int],
                          retrain_seconds: float) -> us.Verification:
    return us.Verification(
        accuracy_original=compared["accuracy"]["original"], accuracy_unlearned=compared["accuracy"]["unlearned"],
        accuracy_retrained=compared["accuracy"]["retrained"],
        agreement_with_retrained=compared["agreement"]["unlearned"],
        parameter_distance=compared["parameter_distance"]["unlearned"],
        probe_balanced_accuracy=compared["probe_balanced_accuracy"], retrain_seconds=retrain_seconds,
        retrained=refs_pb2.ModelRef(model=f"models/{retrained[0]}", version=retrained[1]), test_count=test_count)


def retrain_request(stored: StoredModel, *, model: str, revision: refs_pb2.DatasetRevision, request_id: str
                    ) -> ts.TrainRequest:
    """The TrainRequest that trains `stored` again from scratch (same data, recipe, seed, starting point and DP
    noise) on its dataset as revised, into `model` ("models/{model}")."""
    record, config = stored.record, stored.config
    request = ts.TrainRequest(
        model=model, dataset=refs_pb2.DatasetRef(**record["dataset"]), task=record["task"],
        architecture=ts.Architecture.Value(f"ARCHITECTURE_{config.architecture.upper()}"),
        hyperparameters=ts.Hyperparameters(**record["hyperparameters"]), seed=record["seed"],
        request_id=request_id, revision=revision)
    start = record.get("initialized_from")
    if start:
        request.initialize_from.CopyFrom(refs_pb2.ModelRef(model=start["model"], version=start["version"]))
    privacy = record.get("privacy")
    if privacy:
        accountant = accountant_to_proto(privacy["accountant"])
        request.differential_privacy.CopyFrom(ts.DifferentialPrivacy(
            target_delta=privacy["delta"], noise_multiplier=privacy["noise_multiplier"],
            max_grad_norm=privacy.get("max_grad_norm", 1.0), accountant=accountant))
    return request
