"""The anonymizer's messages to and from umbra.diffusion and umbra.anonymization (the only place the two meet)."""

from __future__ import annotations

import hashlib
import math

from umbra.anonymization import dataset as anonymized_dataset
from umbra.anonymization.anonymize import Request
from umbra.anonymization.preview import Preview
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.common.v1 import image_pb2, refs_pb2
from umbra.diffusion.training import GeneratorHyper
from umbra.privacy import composition
from umbra.privacy.dp_sgd import MAX_GRAD_NORM, MAX_TARGET_EPSILON, DPSettings
from umbra.privacy.mechanisms import Cost
from umbra.runtime import bounds
from umbra.runtime.errors import InvalidInput
from umbra.services.convert import privacy_cost_to_proto
from umbra.storage.derived import png


def hyper_from_proto(request: an.TrainGeneratorRequest) -> GeneratorHyper:
    return GeneratorHyper(epochs=request.epochs or 10, batch_size=request.batch_size or 64,
                          learning_rate=request.learning_rate or 1e-3,
                          noise_multiplicity=request.privacy.noise_multiplicity or 1)


def dp_from_proto(privacy: an.GeneratorPrivacy) -> DPSettings | None:
    """DP-SGD's settings; None for target_epsilon 0 (no DP). Their ranges with DP are DPSettings.validate's (run
    by the plan, which knows n for target_delta); without, the unused fields must still be numbers in range."""
    if not (math.isfinite(privacy.target_epsilon) and 0 <= privacy.target_epsilon <= MAX_TARGET_EPSILON):
        raise InvalidInput("privacy.target_epsilon", f"is {privacy.target_epsilon}: must be a finite number in "
                                                     f"[0, {MAX_TARGET_EPSILON:g}]; 0 trains without DP")
    if privacy.target_epsilon == 0:
        bounds.number(privacy.target_delta, "privacy.target_delta", 0, 1, open_high=True)
        bounds.number(privacy.max_grad_norm, "privacy.max_grad_norm", 0, MAX_GRAD_NORM)
        return None
    return DPSettings(target_delta=privacy.target_delta, target_epsilon=privacy.target_epsilon,
                      max_grad_norm=privacy.max_grad_norm or 1.0)


def generator_result_to_proto(model: str, version: int, cost: Cost) -> an.GeneratorResult:
    return an.GeneratorResult(generator=refs_pb2.ModelRef(model=f"models/{model}", version=version),
                              privacy_cost=privacy_cost_to_proto(cost))


def preview_to_proto(preview: Preview, request: Request) -> an.AnonymizeResponse:
    per_image = privacy_cost_to_proto(request.cost.per_image)
    response = an.AnonymizeResponse(privacy_cost=per_image)
    for key, image, released in zip(preview.keys, preview.images, preview.released, strict=True):
        item = response.images.add(privacy_cost=per_image)
        item.image.CopyFrom(image_pb2.Image(data=png(image.permute(1, 2, 0).numpy()), media_type="image/png",
                                            width=image.shape[-1], height=image.shape[-2], sample_key=key))
        for attribute in request.protected:
            value = released[attribute.name]
            if attribute.numeric:
                item.released_attributes.add(attribute=attribute.name, number=float(value))
            else:
                item.released_attributes.add(attribute=attribute.name, category=value)
    return response


def anonymization_result_to_proto(job: anonymized_dataset.Job,
                                  result: anonymized_dataset.Result) -> an.AnonymizationResult:
    """A dataset costs one image's cost: each person is in one image (assumed), so the images' costs do not add."""
    dataset, number = job.out.output
    per_image = job.request.cost.per_image
    cost = composition.basic(list(per_image.components), "each person in the dataset (one image per person)")
    response = an.AnonymizationResult(
        anonymized=refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=number),
        privacy_cost=privacy_cost_to_proto(cost), image_count=result.samples, left_out=result.left_out)
    if result.record_key:  # a run given `shards` writes parts only: no record yet
        response.record.CopyFrom(refs_pb2.ObjectRef(bucket=job.out.bucket, key=result.record_key))
    return response


def fingerprint(request, ignore: tuple[str, ...] = ()) -> str:
    """A request's identity, less the fields in `ignore`."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in ignore:
        copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def dataset_charge_id(output: tuple[str, int], fingerprint: str) -> str:
    """The ledger's name for the charge of an anonymized version: one per output version and request (less its
    request_id and shards), so every replica's and every retry's call into the version shares it."""
    dataset, version = output
    return f"anonymizer/AnonymizeDataset/datasets/{dataset}/versions/{version}/sha256:{fingerprint}"


def charge_id(kind: str, request) -> str:
    """The ledger's name for a request's charge: its request_id, or the request itself when it has none (the same
    request, with the same seed, releases the same output, so it is charged once)."""
    return f"anonymizer/{kind}/{request.request_id or 'sha256:' + fingerprint(request)}"


def risk_result_to_proto(metrics: dict[str, float]) -> an.RiskResult:
    return an.RiskResult(metrics=metrics)


def evaluation_result_to_proto(evaluation: dict) -> an.EvaluationResult:
    """umbra.services.anonymizer.audit.evaluate's {"metrics": ..., "skipped": {attribute: why}}."""
    return an.EvaluationResult(metrics=evaluation["metrics"], skipped=evaluation["skipped"])
