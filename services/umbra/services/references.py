"""Opening the dataset versions that worker requests name, the same way in every worker: the field named in every
error, NOT_FOUND for what the tenant does not have (another tenant's included). Names are parsed by
umbra.runtime.names."""

from __future__ import annotations

from umbra.runtime import names
from umbra.runtime.errors import InvalidInput, NotFound
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader


def dataset_reader(store: ObjectStore, bucket: str, ref, field: str) -> DatasetReader:
    """A reader of the committed version a DatasetRef names."""
    dataset = names.dataset(ref.dataset, f"{field}.dataset")
    if ref.version < 1:
        raise InvalidInput(f"{field}.version", "must be 1 or more (the coordinator resolves 'latest')")
    try:
        return DatasetReader(store, bucket, dataset, ref.version)
    except NotFound:
        raise NotFound("dataset version", f"{ref.dataset}/versions/{ref.version}") from None
