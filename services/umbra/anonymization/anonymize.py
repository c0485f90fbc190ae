"""Anonymizing face images with a trained generator: check a request against the generator and the dataset,
price it, and re-generate images under privatized protected attributes.

    request = check(generator, dataset_id="faces", label_columns=[...], image_size=64,
                    protected=["gender"], kept=["race"], intensity=0.75, steps=0, seed=1)
    request.cost.per_image        # what each image costs, composed (privatize.per_image)
    images, released = anonymize(net, request, uint8_images, true_labels, rng, generator)

For each image: every protected attribute is released through its mechanism (privatize.release); the image is
noised to the plan's timestep and denoised in DDIM steps, conditioned on the released values of the protected
attributes and the TRUE values of the kept ones, with classifier-free guidance away from "protected
attributes not given" and, when attributes are kept, toward them (away from "no attribute given"). The
generator's attributes that are neither protected nor kept are not given (null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from umbra.anonymization import privatize
from umbra.anonymization.intensity import Plan, plan_for
from umbra.diffusion.attributes import Attribute
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.diffusion.sampling import Schedule, regenerate, schedule_for
from umbra.privacy.mechanisms import Cost
from umbra.runtime import bounds
from umbra.runtime.errors import InvalidInput


@dataclass(frozen=True)
class Generator:
    """A stored generator: where it is, its configuration and its training record."""

    model: str
    version: int
    config: GeneratorConfig
    record: dict

    @property
    def name(self) -> str:
        return f"models/{self.model}/versions/{self.version}"

    def cost(self) -> Cost:
        """ε_g: DP-SGD's guarantee for the generator's training data; infinite without DP."""
        privacy = self.record.get("privacy") or {}
        epsilon = privacy.get("epsilon", math.inf) if privacy.get("dp") else math.inf
        parameters = {k: v for k, v in privacy.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        parameters["accountant_rdp"] = float(privacy.get("accountant") == "rdp")
        return Cost(epsilon, privacy.get("delta", 0.0), "dp_sgd", "generator training", parameters)

    @property
    def trained_on(self) -> str:
        """The id of the dataset the generator was trained on."""
        return self.record.get("dataset", {}).get("dataset", "").removeprefix("datasets/")


@dataclass(frozen=True)
class Costs:
    image: Cost
    attributes: tuple[Cost, ...]
    generator: Cost | None  # when the generator was trained on the dataset being anonymized
    per_image: Cost  # all of the above, composed

    @property
    def charged(self) -> Cost:
        """What an anonymization charges the dataset's ledger: the image and attribute mechanisms (the
        generator's ε_g was charged when it was trained)."""
        return privatize.per_image(self.image, list(self.attributes), None)


@dataclass(frozen=True)
class Request:
    generator: Generator
    protected: tuple[Attribute, ...]
    kept: tuple[Attribute, ...]
    plan: Plan
    schedule: Schedule
    seed: int
    cost: Costs

    @property
    def image_size(self) -> int:
        return self.generator.config.image_size


def check(generator: Generator, *, dataset_id: str, label_columns: list[str], image_size: int,
          protected: list[str], kept: list[str], intensity: float, steps: int, seed: int) -> Request:
    """Every check before any work; InvalidInput names the field."""
    config = generator.config
    plan = plan_for(intensity, steps, design=config.design)
    bounds.seed(seed, "settings.seed")
    if not protected:
        raise InvalidInput("settings.protected_attributes", "name at least one attribute to protect")
    both = set(protected) & set(kept)
    if both:
        raise InvalidInput("settings.kept_attributes", f"{', '.join(sorted(both))} cannot be both protected and "
                                                       f"kept")
    chosen = {}
    for field, names in (("settings.protected_attributes", protected), ("settings.kept_attributes", kept)):
        if len(set(names)) != len(names):
            raise InvalidInput(field, "names an attribute twice")
        for name in names:
            if name not in label_columns:
                raise InvalidInput(field, f"{name!r} is not a label column of the dataset (it has "
                                          f"{', '.join(label_columns) or 'none'})")
            attribute = config.attribute(name)
            if attribute is None:
                raise InvalidInput(field, f"{generator.name} is not conditioned on {name!r} (only on "
                                          f"{', '.join(config.classes)})")
            chosen[name] = attribute
    if image_size < config.image_size:
        raise InvalidInput("dataset", f"its images are {image_size} px; {generator.name} was trained for "
                                      f"{config.image_size} px")
    schedule = schedule_for(config, timestep=plan.timestep, steps=plan.steps)
    protected_attributes = tuple(chosen[n] for n in protected)
    if config.design == "latent":
        image = privatize.latent_cost(schedule.alpha_bar, schedule.start, config.latent_clip)
    else:
        image = privatize.image_cost(schedule.alpha_bar, schedule.start, 3 * config.image_size ** 2)
    attributes = tuple(privatize.attribute_cost(a, plan.attribute_epsilon) for a in protected_attributes)
    generator_cost = generator.cost() if generator.trained_on == dataset_id else None
    costs = Costs(image, attributes, generator_cost, privatize.per_image(image, list(attributes), generator_cost))
    return Request(generator, protected_attributes, tuple(chosen[n] for n in kept), plan, schedule, seed, costs)


def anonymize(net: nn.Module, request: Request, images: torch.Tensor, labels: list[dict[str, str]],
              rngs: list[np.random.Generator], generator: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
    """uint8 images (B, 3, S, S) at any S ≥ the generator's size, with each image's true labels and its own
    random generator (for its released values) -> uint8 images at the generator's size and the released
    values of the protected attributes."""
    size = request.image_size
    if images.shape[-1] != size:
        images = F.interpolate(images.float(), size=(size, size), mode="area").round().clamp(0, 255).to(torch.uint8)
    config = net.config
    released = [{a.name: privatize.release(a, labels[i][a.name], request.plan.attribute_epsilon, rngs[i])
                 for a in request.protected} for i in range(len(labels))]
    bare = torch.tensor([[a.null for a in config.attributes]] * len(labels))  # every attribute null
    conditional = bare.clone()
    for row, (truth, out) in enumerate(zip(labels, released, strict=True)):
        for column, attribute in enumerate(config.attributes):
            if attribute in request.protected:
                conditional[row, column] = attribute.index(out[attribute.name])
            elif attribute in request.kept:
                conditional[row, column] = attribute.index(truth[attribute.name])
    unconditional = conditional.clone()
    for column, attribute in enumerate(config.attributes):
        if attribute in request.protected:
            unconditional[:, column] = attribute.null
    out = regenerate(net, request.schedule, images, conditional, unconditional, guidance=request.plan.guidance,
                     generator=generator, bare=bare if request.kept else None,
                     kept_guidance=request.plan.kept_guidance)
    return out, released
