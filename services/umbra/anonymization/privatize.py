"""Releasing protected attribute values through their DP mechanisms, and the ε each image costs.

- A categorical attribute goes through k-ary randomized response at ε_a (ε_a = 0: uniformly random).
- A numeric one (age) is clipped to the public range, gets Laplace noise of scale range/ε_a, and the result is
  clipped and rounded again (post-processing); ε_a = 0: uniform over the range.
- The image is noised to the plan's timestep: a Gaussian mechanism, μ-GDP with μ from ᾱ (mechanisms.py), whose
  ε is taken at IMAGE_DELTA. A latent generator noises the image's latent, of norm C (sensitivity 2C); the
  pixel generator noises the pixels (sensitivity 2·sqrt(3·S²)).

Per image, the costs compose by basic composition: image + each protected attribute (+ the generator's ε_g,
since a face may also be in the generator's training set). Different images are different people (assumed:
one image per person), so a dataset costs ε_g + one image's cost, and every preview call costs one image's
cost again (a preview shows the user something computed from the originals).
"""

from __future__ import annotations

import numpy as np

from umbra.diffusion.attributes import NUMERIC_RANGE, Attribute, clip
from umbra.privacy import composition, mechanisms
from umbra.privacy.mechanisms import Cost

IMAGE_DELTA = 1e-6  # δ of each image's Gaussian mechanism
PIXEL_RANGE = 2.0  # diffusers' pixels are in [-1, 1]


def release(attribute: Attribute, value: str, epsilon: float, rng: np.random.Generator) -> str:
    """The released value of one protected attribute."""
    if attribute.numeric:
        low, high = NUMERIC_RANGE
        if epsilon == 0:
            return str(round(rng.uniform(low, high)))
        noisy = clip(float(value)) + rng.laplace(0.0, mechanisms.laplace_scale(low, high, epsilon))
        return str(round(clip(noisy)))
    k = len(attribute.values)
    if rng.random() < mechanisms.randomized_response_keep_probability(epsilon, k):
        return value
    others = [v for v in attribute.values if v != value]
    return others[rng.integers(len(others))]


def attribute_cost(attribute: Attribute, epsilon: float) -> Cost:
    if attribute.numeric:
        low, high = NUMERIC_RANGE
        parameters = {"lower": low, "upper": high}
        if epsilon > 0:
            parameters["scale"] = mechanisms.laplace_scale(low, high, epsilon)
        return Cost(epsilon, 0.0, "laplace", f"attribute {attribute.name}", parameters, accountant="analytic")
    k = len(attribute.values)
    return Cost(epsilon, 0.0, "randomized_response", f"attribute {attribute.name}",
                {"k": k, "keep_probability": mechanisms.randomized_response_keep_probability(epsilon, k)},
                accountant="analytic")


def image_cost(alpha_bar: float, timestep: int, dimension: int) -> Cost:
    """The pixel generator's image mechanism: `dimension` pixels in [-1, 1] noised to ᾱ."""
    mu = mechanisms.image_noise_mu(alpha_bar, dimension, PIXEL_RANGE)
    return Cost(mechanisms.gaussian_epsilon(mu, IMAGE_DELTA), IMAGE_DELTA, "gaussian", "image noised to the "
                "timestep", {"timestep": timestep, "alpha_bar": alpha_bar, "mu": mu, "dimension": dimension,
                              "pixel_range": PIXEL_RANGE}, accountant="gdp")


def latent_cost(alpha_bar: float, timestep: int, clip: float) -> Cost:
    """The latent generator's image mechanism: the image's latent, of norm C = `clip`, noised to ᾱ."""
    mu = mechanisms.latent_noise_mu(alpha_bar, clip)
    return Cost(mechanisms.gaussian_epsilon(mu, IMAGE_DELTA), IMAGE_DELTA, "gaussian", "image latent noised to "
                "the timestep", {"timestep": timestep, "alpha_bar": alpha_bar, "mu": mu, "latent_clip": clip},
                accountant="gdp")


def per_image(image: Cost, attributes: list[Cost], generator: Cost | None) -> Cost:
    """One image's guarantee: everything that touched it, composed."""
    parts = [image, *attributes] + ([generator] if generator is not None else [])
    return composition.basic(parts, "per image")
