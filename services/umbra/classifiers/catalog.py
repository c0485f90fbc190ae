"""What the model registry (umbra.classifiers.registry) knows of its versions without their weights: which
versions exist, each one's config and record, and removing one. Torch-free, so that the coordinator reads and checks
model versions without importing torch; the registry adds the weights and training checkpoints on top.

    catalog = ModelCatalog(store)
    stored = catalog.get("umbra-acme", "smile", 2)       # StoredModel: config (ModelConfig) and record
    [(model, version) for model, version in catalog.versions("umbra-acme")]

A model version is immutable and lives under `umbra-<tenant>/models/<model>/v<n>/`: `weights.safetensors`,
`config.json` (ModelConfig, or GeneratorConfig for a generator) and `record.json` (the training record: data
lineage, epsilon, delta, accountant, steps, metrics, seed, code version). The record is written last: a version
exists exactly when its record does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from umbra.classifiers.model_config import ModelConfig
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.runtime.errors import InvalidInput, NotFound
from umbra.runtime.names import validate_resource_id
from umbra.storage.base import ObjectStore

WEIGHTS, CONFIG, RECORD = "weights.safetensors", "config.json", "record.json"
_VERSION = re.compile(r"models/([^/]+)/v([0-9]+)/record\.json")


def version_prefix(model: str, version: int) -> str:
    if version < 1:
        raise InvalidInput("version", "must be 1 or more")
    return f"models/{validate_resource_id(model, 'model')}/v{version}/"


@dataclass(frozen=True)
class StoredModel:
    model: str
    version: int
    config: ModelConfig | GeneratorConfig  # a GeneratorConfig for a generator
    record: dict

    @property
    def kind(self) -> str:
        return getattr(self.config, "kind", "classifier")


class ModelCatalog:
    def __init__(self, store: ObjectStore):
        self.store = store

    def versions(self, bucket: str, model: str | None = None) -> Iterator[tuple[str, int]]:
        """(model, version) of every committed version, in model then version order."""
        prefix = f"models/{validate_resource_id(model, 'model')}/" if model else "models/"
        found = []
        for info in self.store.list(bucket, prefix):
            match = _VERSION.fullmatch(info.key)
            if match:
                found.append((match.group(1), int(match.group(2))))
        yield from sorted(found)

    def next_version(self, bucket: str, model: str) -> int:
        return max((v for _, v in self.versions(bucket, model)), default=0) + 1

    def get(self, bucket: str, model: str, version: int, *, kind: str | None = "classifier",
            field: str = "model") -> StoredModel:
        """A version's config and record. `kind` ("classifier", "generator", or None for either) is what the
        caller can use: a version of another kind is refused, naming `field`."""
        prefix = version_prefix(model, version)
        try:
            record = json.loads(self.store.get(bucket, prefix + RECORD))
            text = self.store.get(bucket, prefix + CONFIG).decode()
        except NotFound:
            raise NotFound("model version", f"models/{model}/versions/{version}") from None
        found = json.loads(text).get("kind", "classifier")
        if kind is not None and found != kind:
            raise InvalidInput(field, f"models/{model}/versions/{version} is a {found}, not a {kind}")
        if found == "generator":
            return StoredModel(model, version, GeneratorConfig.from_json(text), record)
        return StoredModel(model, version, ModelConfig.from_json(text), record)

    def delete(self, bucket: str, model: str, version: int) -> None:
        self.get(bucket, model, version, kind=None)  # NotFound when absent
        prefix = version_prefix(model, version)
        self.store.delete(bucket, prefix + RECORD)  # invisible first, then the rest
        self.store.delete_prefix(bucket, prefix)
