"""Resolving the dataset and model references that worker requests carry, the same way in every worker: the
field named in every error, NOT_FOUND for what the tenant does not have (another tenant's included)."""

from __future__ import annotations

from umbra.runtime.errors import InvalidInput, NotFound
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader


def model_ref(ref, field: str) -> tuple[str, int]:
    """(model id, version) of a ModelRef; the version must be given."""
    if not ref.model.startswith("models/") or ref.version < 1:
        raise InvalidInput(field, "needs model 'models/{model}' and a version of 1 or more")
    return keys.validate_resource_id(ref.model.removeprefix("models/"), f"{field}.model"), ref.version


def dataset_id(name: str, field: str) -> str:
    """The id in 'datasets/{dataset}'."""
    if not name.startswith("datasets/"):
        raise InvalidInput(field, "must look like 'datasets/{dataset}'")
    return keys.validate_resource_id(name.removeprefix("datasets/"), field)


def dataset_reader(store: ObjectStore, bucket: str, ref, field: str) -> DatasetReader:
    """A reader of the committed version a DatasetRef names."""
    dataset = dataset_id(ref.dataset, f"{field}.dataset")
    if ref.version < 1:
        raise InvalidInput(f"{field}.version", "must be 1 or more (the coordinator resolves 'latest')")
    try:
        return DatasetReader(store, bucket, dataset, ref.version)
    except NotFound:
        raise NotFound("dataset version", f"{ref.dataset}/versions/{ref.version}") from None
