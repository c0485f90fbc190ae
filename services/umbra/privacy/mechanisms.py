"""The ε of each mechanism the anonymizer applies, computed exactly and never rounded in our favour.

- k-ary randomized response (a categorical attribute): keep the true value with probability
  p = e^ε / (e^ε + k - 1), else report one of the k - 1 others uniformly; pure ε-DP.
- Clipped Laplace (age): clip to [lower, upper], add Laplace noise of scale (upper - lower) / ε; pure ε-DP.
- Gaussian (an image noised to a diffusion timestep): x_t = sqrt(ᾱ) x + sqrt(1 - ᾱ) z with pixels in a range of
  width r is μ-GDP with μ = sqrt(ᾱ) · r · sqrt(d) / sqrt(1 - ᾱ) (d = C·H·W; Dong, Roth & Su 2019, the same
  curve as Balle & Wang's analytic Gaussian mechanism). Its (ε, δ): δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2),
  solved for the smallest ε with δ(ε) ≤ δ by bisection, returning the upper end of the bracket.

Composition lives in umbra.privacy.composition; the accountants that compose tightly in umbra.privacy.accountants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scipy.stats import norm

from umbra.runtime.errors import InvalidInput


@dataclass(frozen=True)
class Cost:
    """An (ε, δ) guarantee and what gave it."""

    epsilon: float
    delta: float = 0.0
    mechanism: str = ""  # "dp_sgd", "gaussian", "laplace", "randomized_response", "composition"
    description: str = ""  # what it protects, for people: "attribute gender"
    parameters: dict[str, float] = field(default_factory=dict)  # what re-derives the bound
    components: tuple["Cost", ...] = ()  # for a composition
    accountant: str = ""  # the name (umbra.privacy.accountants.ACCOUNTANTS) of what computed ε; "" for the default

    def to_dict(self) -> dict:
        """A JSON-ready form that keeps every parameter (the ledger stores it)."""
        return {"epsilon": self.epsilon, "delta": self.delta, "mechanism": self.mechanism,
                "description": self.description, "parameters": dict(self.parameters),
                "components": [c.to_dict() for c in self.components], "accountant": self.accountant}

    @classmethod
    def from_dict(cls, data: dict) -> "Cost":
        return cls(float(data["epsilon"]), float(data.get("delta", 0.0)), data.get("mechanism", ""),
                   data.get("description", ""), {k: float(v) for k, v in data.get("parameters", {}).items()},
                   tuple(cls.from_dict(c) for c in data.get("components", ())), data.get("accountant", ""))


def randomized_response_keep_probability(epsilon: float, k: int) -> float:
    if k < 2:
        raise InvalidInput("k", "randomized response needs at least two values")
    if not epsilon >= 0 or math.isinf(epsilon):
        raise InvalidInput("epsilon", "must be a finite number of at least 0")
    return 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))


def randomized_response_epsilon(keep_probability: float, k: int) -> float:
    """ε of k-ary randomized response that keeps the true value with this probability (at least 1/k)."""
    if k < 2 or not 1.0 / k <= keep_probability < 1.0:
        raise InvalidInput("keep_probability", f"must be in [1/k, 1) for k = {k}")
    return math.log(keep_probability * (k - 1) / (1.0 - keep_probability))


def laplace_scale(lower: float, upper: float, epsilon: float) -> float:
    """The noise scale of the clipped Laplace mechanism on [lower, upper] at ε (sensitivity: the range)."""
    if not upper > lower:
        raise InvalidInput("upper", "must be above lower")
    if not epsilon > 0 or math.isinf(epsilon):
        raise InvalidInput("epsilon", "must be a positive finite number")
    return (upper - lower) / epsilon


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of a μ-GDP mechanism."""
    # e^ε Φ(·) in log space: at large μ (a lightly noised image) ε reaches thousands and e^ε overflows
    return float(norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon + norm.logcdf(-epsilon / mu - mu / 2)))


def gaussian_epsilon(mu: float, delta: float, tolerance: float = 1e-9) -> float:
    """The smallest ε (to within `tolerance`, rounded up) for which a μ-GDP mechanism is (ε, δ)-DP."""
    if not mu > 0 or math.isinf(mu):
        raise InvalidInput("mu", "must be a positive finite number")
    if not 0 < delta < 1:
        raise InvalidInput("delta", "must be between 0 and 1")
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while gaussian_delta(high, mu) > delta:
        low, high = high, 2 * high
    while high - low > tolerance:
        middle = (low + high) / 2
        if gaussian_delta(middle, mu) > delta:
            low = middle
        else:
            high = middle
    return high


def image_noise_mu(alpha_bar: float, dimension: int, pixel_range: float = 2.0) -> float:
    """μ of noising an image to a timestep with cumulative signal ᾱ (pixels in a range of width `pixel_range`:
    2 for diffusers' [-1, 1]); two images differ by at most pixel_range · sqrt(dimension) in L2."""
    if not 0 < alpha_bar < 1:
        raise InvalidInput("alpha_bar", "must be between 0 and 1")
    if dimension < 1 or not pixel_range > 0:
        raise InvalidInput("dimension", "must be positive")
    return math.sqrt(alpha_bar) * pixel_range * math.sqrt(dimension) / math.sqrt(1.0 - alpha_bar)


def latent_noise_mu(alpha_bar: float, clip: float) -> float:
    """μ of noising a latent of norm at most `clip` (C) to cumulative signal ᾱ: z_t = sqrt(ᾱ) z + sqrt(1-ᾱ) n.
    Two people's latents differ by at most 2C, so μ = 2C·sqrt(ᾱ)/sqrt(1-ᾱ); the latent's dimension does not
    enter."""
    if not 0 < alpha_bar < 1:
        raise InvalidInput("alpha_bar", "must be between 0 and 1")
    if not (math.isfinite(clip) and clip > 0):
        raise InvalidInput("latent_clip", "must be a positive number")
    return 2.0 * clip * math.sqrt(alpha_bar) / math.sqrt(1.0 - alpha_bar)


def dp_sgd_cost(privacy: dict, description: str) -> Cost:
    """The cost a DP-SGD training record's "privacy" describes (ε, δ, and the noise multiplier, sample rate and
    steps that let a ledger recompose it); ε is infinite for a run without DP."""
    if not privacy or not privacy.get("dp", "epsilon" in privacy):
        return Cost(math.inf, 0.0, "dp_sgd", description)
    parameters = {k: float(v) for k, v in privacy.items()
                  if k in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "noise_multiplicity")}
    return Cost(float(privacy["epsilon"]), float(privacy.get("delta", 0.0)), "dp_sgd", description, parameters,
                accountant=privacy.get("accountant", "prv"))
