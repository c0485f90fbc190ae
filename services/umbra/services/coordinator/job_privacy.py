"""The ε of a protection job, composed as the ledger composes what falls on one person: every preview round, the
released dataset and the generator's training once (when it was trained on this dataset).

The anonymizer's per-image cost of a round (and of the dataset) includes the generator's DP-SGD run when the
generator was trained on this dataset; the ledger charged that run once, when it was trained, so it is taken out
of each per-image cost and counted once.

    parts = job_epsilon(round_costs, dataset_cost)      # JobPrivacy(previews, dataset, generator, total)
    projected = job_epsilon(round_costs, round_costs[-1])  # the job's ε were the last round's intensity released
"""

from __future__ import annotations

from dataclasses import dataclass

from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost


@dataclass(frozen=True)
class JobPrivacy:
    previews: Cost | None
    dataset: Cost | None
    generator: Cost | None
    total: Cost | None


def without_generator(cost: Cost) -> tuple[Cost, Cost | None]:
    """(what the anonymizer charged for an image, the generator's ε_g) of a per-image cost."""
    generator = [c for c in cost.components if c.mechanism == "dp_sgd"]
    if not generator:
        return cost, None
    return composition.basic([c for c in cost.components if c.mechanism != "dp_sgd"], cost.description), generator[0]


def job_epsilon(round_costs: list[dict], dataset_cost: dict | None = None) -> JobPrivacy:
    """The job's composed privacy from its rounds' per-image costs and the dataset's (as Cost dicts)."""
    split = [without_generator(Cost.from_dict(c)) for c in round_costs]
    rounds = [charged for charged, _ in split]
    generators = [g for _, g in split if g is not None]
    dataset = None
    if dataset_cost:
        dataset, generator = without_generator(Cost.from_dict(dataset_cost))
        generators += [generator] if generator is not None else []
    generator = generators[0] if generators else None
    previews = composition.tight(rounds, "every preview round") if rounds else None
    parts = rounds + [c for c in (dataset, generator) if c is not None]
    total = composition.tight(parts, "every preview round, the anonymized dataset and the generator's training (a "
                                     "person in all of them)") if parts else None
    return JobPrivacy(previews, dataset, generator, total)
