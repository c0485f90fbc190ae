"""A generator's configuration, saved beside its weights (`config.json`, with `"kind": "generator"`). Torch- and
diffusers-free, so that reading a model version's metadata (umbra.classifiers.catalog) needs neither; the networks
it describes are built by umbra.diffusion.generator.build."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from umbra.diffusion.attributes import Attribute

KIND = "generator"


@dataclass(frozen=True)
class GeneratorConfig:
    image_size: int
    attributes: tuple[Attribute, ...]
    channels: tuple[int, ...] = (32, 64, 64)  # per resolution level; 1.1M parameters at these
    layers_per_block: int = 1
    attention: bool = True  # self-attention at the lowest resolution
    norm_groups: int = 8  # GroupNorm: per-sample, so DP-SGD's per-example gradients are exact
    train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # What the UNet predicts: "sample" (the clean image) or "epsilon" (the noise). Measured on 2 cores, a few hundred
    # steps in: predicting the noise left visible pixel noise in every regenerated image (its error at small t),
    # predicting the image gave smooth faces; the DDIM schedulers take either.
    prediction: str = "sample"
    kind: str = field(default=KIND)
    # "latent" (umbra.diffusion.latent): an autoencoder whose latent, projected to norm `latent_clip`, is what is
    # noised and denoised; "pixel": umbra.diffusion.generator's UNet, on the pixels (the first design; stored
    # configs without the field are pixel ones).
    design: str = "latent"
    latent_dim: int = 64
    latent_clip: float = 8.0  # C: umbra.diffusion.generator.latent_clip_for(latent_dim)

    def to_json(self) -> str:
        data = asdict(self)
        data["attributes"] = [a.to_dict() for a in self.attributes]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GeneratorConfig":
        data = json.loads(text)
        if data.get("kind") != KIND:
            raise ValueError("not a generator configuration")
        data["attributes"] = tuple(Attribute.from_dict(a) for a in data["attributes"])
        data["channels"] = tuple(data["channels"])
        data.setdefault("design", "pixel")
        return cls(**data)

    @property
    def classes(self) -> tuple[str, ...]:
        """The registry's listing shows a model's classes; a generator's are its attributes."""
        return tuple(a.name for a in self.attributes)

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)
