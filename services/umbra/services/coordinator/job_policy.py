"""A job's release policy between its proto and umbra.privacy.policy, and a judged criterion as the report's JSON
and GetReport give it.

    policy = policy_from_proto(spec.policy)          # Policy (empty when the spec sets no limit)
    row = criterion_to_dict(criterion)               # {name, attribute, value, low, high, limit, ...}
    response.criteria.append(criterion_to_proto(row))

ε is shown as a guarantee, so it is rounded up (`epsilon_text`): a reader never sees a stronger guarantee than
the one that holds.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal

from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.privacy.policy import EPSILON, Criterion, Policy


def policy_from_proto(p: js.ReleasePolicy) -> Policy:
    """The spec's ReleasePolicy as a Policy; an unset optional limit is no criterion."""
    return Policy(
        max_reidentification=p.max_reidentification if p.HasField("max_reidentification") else None,
        max_adversary_advantage=dict(p.max_adversary_advantage),
        min_kept_utility=dict(p.min_kept_utility),
        max_epsilon=p.max_epsilon if p.HasField("max_epsilon") else None)


def epsilon_text(epsilon: float) -> str:
    """ε at 2 decimals, rounded up (exactly: the float's own value, never down)."""
    if not math.isfinite(epsilon):
        return "unbounded" if epsilon > 0 else "not measured"
    return f"{Decimal(epsilon).quantize(Decimal('0.01'), rounding=ROUND_CEILING):.2f}"


def figure_text(c: Criterion) -> str:
    """The criterion's figure in words with its 95% interval; ε rounded up."""
    if c.name == EPSILON and c.value is not None:
        return epsilon_text(c.value)
    return c.figure_text()


def limit_text(c: Criterion) -> str:
    return f"{c.comparison} {epsilon_text(c.limit) if c.name == EPSILON else c.show(c.limit)}"


def summary(c: Criterion) -> str:
    """Criterion.summary with ε rounded up."""
    if c.name != EPSILON or c.value is None:
        return c.summary
    return c.summary.replace(c.figure_text(), figure_text(c), 1)


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def criterion_to_dict(c: Criterion) -> dict:
    low, high = c.bounds if c.bounds is not None else (None, None)
    return {"name": c.name, "attribute": c.attribute, "title": c.title, "value": _number(c.value),
            "low": _number(low), "high": _number(high), "limit": float(c.limit), "comparison": c.comparison,
            "faces": int(c.faces), "met": c.met, "certain": c.certain, "figure": figure_text(c),
            "summary": summary(c)}


def criterion_to_proto(row: dict) -> js.PolicyCriterion:
    """A criterion of the report's JSON as a PolicyCriterion; a figure not measured is NaN."""
    value = row.get("value")
    return js.PolicyCriterion(name=row["name"], attribute=row.get("attribute", ""),
                              value=math.nan if value is None else value, limit=row["limit"], met=row["met"],
                              comparison=row["comparison"], faces=row.get("faces", 0), summary=row["summary"])
