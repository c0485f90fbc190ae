"""A classifier's configuration, saved beside its weights (`config.json`). Torch-free, so that reading a model
version's metadata (umbra.classifiers.catalog) needs no torch; the networks it describes are built by
umbra.classifiers.architectures.create."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """Saved beside the weights (config.json): everything needed to rebuild the model."""

    architecture: str
    num_classes: int
    image_size: int
    classes: list[str] = field(default_factory=list)
    width: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # In eval mode, average the features of the image and its mirror image (test-time flip averaging, the
    # counterpart of random flips in training); training mode always sees the one view it is given.
    mirror_average: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        data = json.loads(text)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)
