"""Privacy accountants, by name, as Opacus registers its own: each composes the mechanisms it understands and
answers ε for a δ, always an upper bound.

    accountant = create_accountant("gdp")
    accountant.step(image_cost)          # a Gaussian mechanism, its μ in parameters["mu"]
    accountant.get_epsilon(1e-6)

- "gdp": Gaussian mechanisms in μ-GDP (Dong, Roth & Su 2019). Composing μ_i-GDP mechanisms gives exactly
  sqrt(Σμ_i²)-GDP, so this is tight, and it stays exact where a numerical accountant cannot go (a barely noised
  image has μ in the hundreds).
- "prv" / "rdp": DP-SGD (Poisson-subsampled Gaussian: noise multiplier, sample rate, steps) through Opacus'
  privacy-random-variable accountant (ε's upper bound, not its estimate) or its Rényi accountant.
- "analytic": one pure ε-DP mechanism in closed form (randomized response, Laplace); several add up.
- "basic": basic composition of anything: ε and δ add up.

`create_accountant` refuses a name it does not know (ValueError), like opacus.accountants.create_accountant.
Importing this module imports neither Opacus nor torch: "prv" and "rdp" import Opacus when they compute ε.
"""

from __future__ import annotations

import math
from typing import ClassVar

from umbra.privacy.mechanisms import Cost, gaussian_epsilon


class Accountant:
    """Composes costs one `step` at a time; `get_epsilon(delta)` is an upper bound at that δ."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.history: list[Cost] = []

    def accepts(self, cost: Cost) -> bool:
        raise NotImplementedError

    def step(self, cost: Cost) -> None:
        if not self.accepts(cost):
            raise ValueError(f"the {self.name!r} accountant cannot compose a {cost.mechanism or 'plain'} cost "
                             f"with parameters {sorted(cost.parameters)}")
        self.history.append(cost)

    def get_epsilon(self, delta: float) -> float:
        raise NotImplementedError


class BasicComposition(Accountant):
    name = "basic"

    def accepts(self, cost: Cost) -> bool:
        return True

    def get_epsilon(self, delta: float) -> float:
        needed = math.fsum(c.delta for c in self.history)
        if delta < needed:
            raise ValueError(f"basic composition holds at δ ≥ {needed:g}, not at {delta:g}")
        return math.fsum(c.epsilon for c in self.history)


class AnalyticAccountant(BasicComposition):
    """Pure ε-DP mechanisms, each in its closed form; composed, their ε add up."""

    name = "analytic"

    def accepts(self, cost: Cost) -> bool:
        return cost.mechanism in ("randomized_response", "laplace") and cost.delta == 0


class GaussianDPAccountant(Accountant):
    name = "gdp"

    def accepts(self, cost: Cost) -> bool:
        mu = cost.parameters.get("mu", 0.0)
        return cost.mechanism == "gaussian" and mu > 0 and math.isfinite(mu)

    @property
    def mu(self) -> float:
        return math.sqrt(math.fsum(c.parameters["mu"] ** 2 for c in self.history))

    def get_epsilon(self, delta: float) -> float:
        return gaussian_epsilon(self.mu, delta) if self.history else 0.0


def _dp_sgd_steps(cost: Cost) -> tuple[float, float, int] | None:
    """(noise multiplier, sample rate, steps) of a DP-SGD cost, or of a Gaussian mechanism seen as one
    full-batch step with noise multiplier 1/μ; None when the parameters are not there."""
    p = cost.parameters
    if cost.mechanism == "dp_sgd" and p.get("noise_multiplier", 0) > 0 and 0 < p.get("sample_rate", 0) <= 1 \
            and p.get("steps", 0) >= 1:
        return p["noise_multiplier"], p["sample_rate"], int(p["steps"])
    if cost.mechanism == "gaussian" and p.get("mu", 0) > 0 and math.isfinite(p["mu"]):
        return 1.0 / p["mu"], 1.0, 1
    return None


class _OpacusAccountant(Accountant):
    opacus_name: ClassVar[str]

    def accepts(self, cost: Cost) -> bool:
        return _dp_sgd_steps(cost) is not None

    def get_epsilon(self, delta: float) -> float:
        # Here, not at the top: `import opacus` imports torch, and the coordinator composes its ledger with this
        # module. So its process imports torch when it composes a DP-SGD charge, and only then (pyproject.toml's
        # "coordinator-light" contract says why no torch-free accountant gives these figures).
        from opacus.accountants import create_accountant as opacus_accountant

        if not self.history:
            return 0.0
        accountant = opacus_accountant(self.opacus_name)
        accountant.history = [_dp_sgd_steps(c) for c in self.history]
        return float(accountant.get_epsilon(delta))  # PRV: the upper end of its error bound


class PRVAccountant(_OpacusAccountant):
    name = opacus_name = "prv"


class RDPAccountant(_OpacusAccountant):
    name = opacus_name = "rdp"


ACCOUNTANTS: dict[str, type[Accountant]] = {
    a.name: a for a in (BasicComposition, AnalyticAccountant, GaussianDPAccountant, PRVAccountant, RDPAccountant)}


def create_accountant(name: str) -> Accountant:
    try:
        return ACCOUNTANTS[name]()
    except KeyError:
        raise ValueError(f"unknown accountant {name!r}: one of {', '.join(sorted(ACCOUNTANTS))}") from None
