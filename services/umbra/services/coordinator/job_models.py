"""The models a protection job uses, read from the tenant's registry in the coordinator's object store: the DP
generator it anonymizes with (one trained on the job's dataset is reused; otherwise the job trains one) and the
classifier it updates by unlearning (which must have been trained on the job's dataset).

    ref = reusable_generator(store, bucket, "faces", 1, ["gender", "age"])   # a ModelRef, or None
    request = generator_request(job_id, spec, request_id)                    # TrainGenerator for the job
    check_model(store, bucket, spec)                                         # InvalidInput naming spec.model
"""

from __future__ import annotations

import json
import math

from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.classifiers.catalog import CONFIG, RECORD, ModelCatalog, version_prefix
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.runtime import names
from umbra.runtime.errors import InvalidInput, NotFound
from umbra.storage.base import ObjectStore

# A generator the job trains itself (no generator named, none trained on the dataset): DP-SGD at this target,
# with the anonymizer's defaults otherwise. The tenant's budget (and the job's) must pay for it.
GENERATOR_EPSILON, GENERATOR_DELTA = 6.0, 1e-6
GENERATOR_EPOCHS, GENERATOR_BATCH = 4, 64  # the batch is at most the training split


def _json(store: ObjectStore, bucket: str, key: str) -> dict | None:
    try:
        return json.loads(store.get(bucket, key))
    except (NotFound, ValueError):
        return None


def reusable_generator(store: ObjectStore, bucket: str, dataset: str, version: int,
                       attributes: list[str]) -> refs_pb2.ModelRef | None:
    """A DP generator of the tenant trained on datasets/{dataset}/versions/{version} and conditioned on every one of
    `attributes` (the last of them by model name and version), or None."""
    found = None
    for model, number in ModelCatalog(store).versions(bucket):
        record = _json(store, bucket, version_prefix(model, number) + RECORD) or {}
        config = _json(store, bucket, version_prefix(model, number) + CONFIG) or {}
        trained_on, privacy = record.get("dataset") or {}, record.get("privacy") or {}
        if (config.get("kind") == "generator" and trained_on.get("dataset") == f"datasets/{dataset}"
                and trained_on.get("version") == version
                and set(attributes) <= set(record.get("condition_attributes", ()))
                and privacy.get("dp") and math.isfinite(privacy.get("epsilon", math.inf))):
            found = (model, number)
    return refs_pb2.ModelRef(model=f"models/{found[0]}", version=found[1]) if found else None


def generator_model(job: str) -> str:
    """The model a job's own generator is written into."""
    return f"models/{job[:52]}-generator"


def generator_request(job: str, spec: js.ProtectionJobSpec, request_id: str,
                      train_samples: int) -> an.TrainGeneratorRequest:
    """TrainGenerator for a job without a generator: DP-SGD on the dataset's `train_samples` training images,
    conditioned on the protected and kept attributes, within the job's budget."""
    request = an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset=spec.dataset.dataset, version=spec.dataset.version, split="train"),
        condition_attributes=[*spec.protected_attributes, *spec.kept_attributes], model=generator_model(job),
        epochs=GENERATOR_EPOCHS, batch_size=max(1, min(GENERATOR_BATCH, train_samples)), seed=spec.seed,
        request_id=request_id,
        privacy=an.GeneratorPrivacy(target_epsilon=GENERATOR_EPSILON, target_delta=GENERATOR_DELTA,
                                    max_grad_norm=1.0, noise_multiplicity=1))
    if spec.HasField("budget"):
        request.budget.CopyFrom(spec.budget)
    return request


def check_model(store: ObjectStore, bucket: str, spec: js.ProtectionJobSpec) -> dict:
    """The record of the classifier `spec.model`, which must exist and have been trained on the job's dataset
    version; InvalidInput or NotFound naming spec.model otherwise."""
    model, version = names.model_ref(spec.model, "spec.model")
    stored = ModelCatalog(store).get(bucket, model, version, kind="classifier", field="spec.model")
    trained_on = stored.record.get("dataset") or {}
    wanted = f"{spec.dataset.dataset}/versions/{spec.dataset.version}"
    found = f"{trained_on.get('dataset')}/versions/{trained_on.get('version')}"
    if found != wanted:
        raise InvalidInput("spec.model", f"models/{model}/versions/{version} was trained on {found}, not on the "
                                         f"job's dataset {wanted}")
    return stored.record
