"""The registry of trained classifiers in object storage. A model version is immutable and lives under
`umbra-<tenant>/models/<model>/v<n>/`: `weights.safetensors`, `config.json` (ModelConfig) and `record.json`
(the training record: data lineage, epsilon, delta, accountant, steps, metrics, seed, code version). The record
is written last: a version exists exactly when its record does. Training checkpoints sit beside, under
`models/<model>/runs/<run>/`."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from umbra.classifiers.architectures import ModelConfig
from umbra.runtime.errors import InvalidInput, NotFound
from umbra.runtime.names import validate_resource_id
from umbra.storage.base import ObjectStore

WEIGHTS, CONFIG, RECORD = "weights.safetensors", "config.json", "record.json"
_CHECKPOINT = re.compile(r"checkpoint-([0-9]{1,9})\.pt")
_VERSION = re.compile(r"models/([^/]+)/v([0-9]+)/record\.json")


def version_prefix(model: str, version: int) -> str:
    if version < 1:
        raise InvalidInput("version", "must be 1 or more")
    return f"models/{validate_resource_id(model, 'model')}/v{version}/"


def run_prefix(model: str, run: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", run):
        raise InvalidInput("run", "must be 32 hex digits")
    return f"models/{validate_resource_id(model, 'model')}/runs/{run}/"


@dataclass(frozen=True)
class StoredModel:
    model: str
    version: int
    config: ModelConfig  # or a GeneratorConfig (umbra.diffusion.generator) for a generator
    record: dict

    @property
    def kind(self) -> str:
        return getattr(self.config, "kind", "classifier")


class ModelRegistry:
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

    def write(self, bucket: str, model: str, config, weights: dict[str, torch.Tensor],
              record: dict) -> int:
        """Stores a new version (weights and config first, the record last) and returns its number."""
        version = self.next_version(bucket, model)
        prefix = version_prefix(model, version)
        state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        self.store.put(bucket, prefix + WEIGHTS, save(state))
        self.store.put(bucket, prefix + CONFIG, config.to_json().encode(), content_type="application/json")
        self.store.put(bucket, prefix + RECORD, json.dumps(dict(record, model=model, version=version), indent=2,
                                                           sort_keys=True).encode(), content_type="application/json")
        return version

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
            from umbra.diffusion.generator import GeneratorConfig  # imports diffusers: only when needed

            return StoredModel(model, version, GeneratorConfig.from_json(text), record)
        return StoredModel(model, version, ModelConfig.from_json(text), record)

    def weights(self, bucket: str, model: str, version: int) -> dict[str, torch.Tensor]:
        """The weights, checksum-verified by the store on read."""
        return load(self.store.get(bucket, version_prefix(model, version) + WEIGHTS))

    def delete(self, bucket: str, model: str, version: int) -> None:
        self.get(bucket, model, version, kind=None)  # NotFound when absent
        prefix = version_prefix(model, version)
        self.store.delete(bucket, prefix + RECORD)  # invisible first, then the rest
        self.store.delete_prefix(bucket, prefix)

    def save_checkpoint(self, bucket: str, model: str, run: str, epoch: int, state: dict) -> str:
        """Stores the run's checkpoint after `epoch` and then removes its earlier ones: a resume needs only the
        latest, so a run holds one checkpoint (two for a moment) however many epochs it has. The new one is whole
        in the store (`put` is atomic) before any earlier one goes, so a crash in between still resumes."""
        key = run_prefix(model, run) + f"checkpoint-{epoch:04d}.pt"
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.store.put(bucket, key, buffer.getvalue())
        for _, earlier in self._checkpoints(bucket, model, run):
            if earlier != key:
                self.store.delete(bucket, earlier)
        return key

    def latest_checkpoint(self, bucket: str, model: str, run: str) -> dict | None:
        """The newest checkpoint of a run (by epoch), or None. Its SHA-256 is verified before anything is
        unpickled, and only tensors and plain containers are accepted (torch.load with weights_only)."""
        found = self._checkpoints(bucket, model, run)
        if not found:
            return None
        return torch.load(io.BytesIO(self.store.get(bucket, max(found)[1])), weights_only=True)

    def delete_checkpoints(self, bucket: str, model: str, run: str) -> None:
        """Removes a run's checkpoints (once its version is written, nothing resumes from them)."""
        for _, key in self._checkpoints(bucket, model, run):
            self.store.delete(bucket, key)

    def _checkpoints(self, bucket: str, model: str, run: str) -> list[tuple[int, str]]:
        """(epoch, key) of each checkpoint of a run."""
        prefix = run_prefix(model, run)
        found = []
        for info in self.store.list(bucket, prefix):
            match = _CHECKPOINT.fullmatch(info.key.removeprefix(prefix))
            if match:
                found.append((int(match.group(1)), info.key))
        return found
