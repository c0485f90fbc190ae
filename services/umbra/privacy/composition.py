"""Composing privacy costs that fall on the same people: basic composition, and a tight one that is never looser.

    basic([image, gender])      # ε and δ add up: valid for any mix of mechanisms
    tight(ledger_costs)         # what the ledger checks a budget against
    cached(ledger_costs)        # whether tight() would find every accountant's answer in the cache

`tight` takes the mechanisms apart (compositions into their parts) and composes each family with the accountant
that understands it, at the δ that basic composition would give that family:

- Gaussian mechanisms (images noised to a timestep) in μ-GDP ("gdp"): exact for any number of them;
- DP-SGD runs (noise multiplier, sample rate, steps) with Opacus' PRV accountant ("prv");
- everything else (randomized response, Laplace, a cost without its parameters) by basic composition.

Each family's ε is the smaller of its accountant's and basic composition's (both are valid at that δ), and the
families add up by basic composition. So the result is a valid (ε, δ) guarantee with the same δ as basic
composition and an ε never above it. If an accountant fails numerically, its family falls back to basic.

An accountant is slow on a long history (PRV takes 10-20 s on 10^5 DP-SGD steps), and the ledger composes a
tenant's whole history on every charge. So each family's ε is kept in a bounded LRU cache keyed by the family's
canonical form: its accountant, its δ, and its parts' mechanisms, (ε, δ) and parameters, in a sorted order. The
accountant always sees the parts in that order, so the result does not depend on the order of the costs, and a
cached answer is bit for bit the one computed again (an accountant's failure, a fallback, is not cached). One
computation at a time runs per key: a second caller waits for it rather than repeating it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict

from umbra.privacy.accountants import create_accountant
from umbra.privacy.mechanisms import Cost

log = logging.getLogger(__name__)
TIGHT = "tight"  # the accountant name of tight()'s result
_FAMILIES = (("gdp", "Gaussian mechanisms (μ-GDP)"), ("prv", "DP-SGD (PRV accountant)"))
CACHE_SIZE = 1024  # families' ε kept (a key is a digest: a long history costs no more memory than a short one)

_cache: OrderedDict[tuple[str, bytes], float] = OrderedDict()
_computing: dict[tuple[str, bytes], threading.Lock] = {}
_lock = threading.Lock()


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


def _families(costs: list[Cost]) -> tuple[list[tuple[str, str, list[Cost]]], list[Cost]]:
    """Each accountant's family (in _FAMILIES' order: Gaussians are gone by "prv"'s turn), and the rest."""
    rest = leaves(costs)
    found = []
    for name, label in _FAMILIES:
        accountant = create_accountant(name)
        family, others = [], []
        for cost in rest:
            (family if accountant.accepts(cost) else others).append(cost)
        if family:
            found.append((name, label, family))
        rest = others
    return found, rest


def _canonical(name: str, family: list[Cost]) -> tuple[tuple[str, bytes], list[Cost]]:
    """The cache key of a family and its parts in the order the accountant composes them. What an accountant reads
    of a part is its mechanism, (ε, δ) and parameters; repr() writes each float exactly."""
    def form(cost: Cost) -> tuple:
        return cost.mechanism, cost.epsilon, cost.delta, tuple(sorted(cost.parameters.items()))

    ordered = sorted(family, key=form)
    digest = hashlib.sha256(repr(tuple(form(c) for c in ordered)).encode()).digest()
    return (name, digest), ordered


def _compose(name: str, family: list[Cost], fallback: Cost) -> tuple[float, bool]:
    """The family's ε at the fallback's δ, and whether the accountant answered (False: basic composition)."""
    if not fallback.delta > 0:
        return fallback.epsilon, True
    accountant = create_accountant(name)
    try:
        for cost in family:
            accountant.step(cost)
        return min(fallback.epsilon, accountant.get_epsilon(fallback.delta)), True
    except (ValueError, ArithmeticError, RuntimeError, MemoryError) as exc:
        log.warning("the %s accountant failed (%s): basic composition for %d costs", name, exc, len(family))
        return fallback.epsilon, False


def _family_epsilon(name: str, family: list[Cost], fallback: Cost) -> float:
    key, ordered = _canonical(name, family)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        computing = _computing.setdefault(key, threading.Lock())
    with computing:  # the first caller computes; the others wait for its answer
        with _lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
        try:
            epsilon, answered = _compose(name, ordered, fallback)
            with _lock:
                if answered:
                    _cache[key] = epsilon
                    while len(_cache) > CACHE_SIZE:
                        _cache.popitem(last=False)
        finally:
            with _lock:
                _computing.pop(key, None)
    return epsilon


def tight(costs: list[Cost], description: str = "") -> Cost:
    """The composition of `costs` with each family of mechanisms composed by its own accountant."""
    families, rest = _families(costs)
    parts: list[Cost] = []
    for name, label, family in families:
        fallback = basic(family)
        epsilon = _family_epsilon(name, family, fallback)
        parts.append(Cost(epsilon, fallback.delta, "composition", label, components=tuple(family), accountant=name))
    if rest:
        parts.append(basic(rest, "other mechanisms (basic composition)"))
    return Cost(math.fsum(p.epsilon for p in parts), math.fsum(p.delta for p in parts), "composition", description,
                components=tuple(parts), accountant=TIGHT)


def cached(costs: list[Cost]) -> bool:
    """Whether tight(costs) would run no accountant (every family's ε is in the cache, or needs none)."""
    families, _ = _families(costs)
    keys = [_canonical(name, family)[0] for name, _, family in families if basic(family).delta > 0]
    with _lock:
        return all(key in _cache for key in keys)


def clear_cache() -> None:
    """Forgets every cached ε (as a restarted process would)."""
    with _lock:
        _cache.clear()
