"""Composing privacy costs that fall on the same people: basic composition, and a tight one that is never looser.

    basic([image, gender])      # ε and δ add up: valid for any mix of mechanisms
    tight(ledger_costs)         # what the ledger checks a budget against

`tight` takes the mechanisms apart (compositions into their parts) and composes each family with the accountant
that understands it, at the δ that basic composition would give that family:

- Gaussian mechanisms (images noised to a timestep) in μ-GDP ("gdp"): exact for any number of them;
- DP-SGD runs (noise multiplier, sample rate, steps) with Opacus' PRV accountant ("prv");
- everything else (randomized response, Laplace, a cost without its parameters) by basic composition.

Each family's ε is the smaller of its accountant's and basic composition's (both are valid at that δ), and the
families add up by basic composition. So the result is a valid (ε, δ) guarantee with the same δ as basic
composition and an ε never above it. If an accountant fails numerically, its family falls back to basic.
"""

from __future__ import annotations

import logging
import math

from umbra.privacy.accountants import create_accountant
from umbra.privacy.mechanisms import Cost

log = logging.getLogger(__name__)
TIGHT = "tight"  # the accountant name of tight()'s result
_FAMILIES = (("gdp", "Gaussian mechanisms (μ-GDP)"), ("prv", "DP-SGD (PRV accountant)"))


def basic(costs: list[Cost], description: str = "") -> Cost:
    """Basic composition: ε and δ add up (valid for any mechanisms on the same data)."""
    return Cost(epsilon=math.fsum(c.epsilon for c in costs), delta=math.fsum(c.delta for c in costs),
                mechanism="composition", description=description, components=tuple(costs), accountant="basic")


def leaves(costs: list[Cost]) -> list[Cost]:
    """The single mechanisms inside compositions (a composition without its parts is a leaf)."""
    found: list[Cost] = []
    for cost in costs:
        if cost.mechanism == "composition" and cost.components:
            found += leaves(list(cost.components))
        else:
            found.append(cost)
    return found


def tight(costs: list[Cost], description: str = "") -> Cost:
    """The composition of `costs` with each family of mechanisms composed by its own accountant."""
    rest = leaves(costs)
    parts: list[Cost] = []
    for name, label in _FAMILIES:
        accountant = create_accountant(name)
        family = [c for c in rest if accountant.accepts(c)]  # Gaussians are gone by "prv"'s turn
        if not family:
            continue
        rest = [c for c in rest if not any(c is f for f in family)]
        fallback = basic(family)
        epsilon = fallback.epsilon
        try:
            for cost in family:
                accountant.step(cost)
            epsilon = min(epsilon, accountant.get_epsilon(fallback.delta)) if fallback.delta > 0 else epsilon
        except (ValueError, ArithmeticError, RuntimeError, MemoryError) as exc:
            log.warning("the %s accountant failed (%s): basic composition for %d costs", name, exc, len(family))
        parts.append(Cost(epsilon, fallback.delta, "composition", label, components=tuple(family), accountant=name))
    if rest:
        parts.append(basic(rest, "other mechanisms (basic composition)"))
    return Cost(math.fsum(p.epsilon for p in parts), math.fsum(p.delta for p in parts), "composition", description,
                components=tuple(parts), accountant=TIGHT)
