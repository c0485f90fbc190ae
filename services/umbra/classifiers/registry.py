"""The registry of trained classifiers (and generators) in object storage: umbra.classifiers.catalog's versions,
configs and records, plus the weights (`weights.safetensors`, written first) and the training checkpoints, which
sit beside the versions under `models/<model>/runs/<run>/`. This is the part that needs torch.

    registry = ModelRegistry(store)
    version = registry.write("umbra-acme", "smile", config, model.state_dict(), record)
    model.load_state_dict(registry.weights("umbra-acme", "smile", version))
"""

from __future__ import annotations

import io
import json
import re

import torch
from safetensors.torch import load, save

from umbra.classifiers.catalog import CONFIG, RECORD, WEIGHTS, ModelCatalog, version_prefix
from umbra.runtime.errors import InvalidInput
from umbra.runtime.names import validate_resource_id

_CHECKPOINT = re.compile(r"checkpoint-([0-9]{1,9})\.pt")


def run_prefix(model: str, run: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", run):
        raise InvalidInput("run", "must be 32 hex digits")
    return f"models/{validate_resource_id(model, 'model')}/runs/{run}/"


class ModelRegistry(ModelCatalog):
    """The catalog's versions, configs and records, with their weights and the runs' checkpoints."""

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

    def weights(self, bucket: str, model: str, version: int) -> dict[str, torch.Tensor]:
        """The weights, checksum-verified by the store on read."""
        return load(self.store.get(bucket, version_prefix(model, version) + WEIGHTS))

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
