"""The protection job's report composes ε as the ledger holds it: each round's per-image cost carries the
generator's DP-SGD run (ε_g, when the generator was trained on the dataset), which the ledger charged once, when
it was trained; the report counts it once, not once per round."""

from __future__ import annotations

from umbra.anonymization import privatize
from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost
from umbra.services.coordinator.job_report import _without_generator

GENERATOR = Cost(8.0, 1e-5, "dp_sgd", "generator training",
                 {"noise_multiplier": 0.8, "sample_rate": 0.1, "steps": 50.0, "delta": 1e-5, "epsilon": 8.0,
                  "max_grad_norm": 1.0, "noise_multiplicity": 1.0})
IMAGE = Cost(40.0, 1e-6, "gaussian", "image noised to the timestep", {"mu": 4.0})
ATTRIBUTE = Cost(1.0, 0.0, "randomized_response", "attribute gender", {"k": 2.0})


def test_a_per_image_cost_splits_into_what_was_charged_and_the_generator():
    per_image = privatize.per_image(IMAGE, [ATTRIBUTE], GENERATOR)
    charged, generator = _without_generator(per_image)
    assert generator == GENERATOR
    assert charged.epsilon == IMAGE.epsilon + ATTRIBUTE.epsilon and charged.delta == IMAGE.delta
    assert _without_generator(privatize.per_image(IMAGE, [ATTRIBUTE], None)) == (
        privatize.per_image(IMAGE, [ATTRIBUTE], None), None)  # a generator trained elsewhere: nothing to split


def test_three_rounds_count_the_generator_once():
    rounds = [privatize.per_image(IMAGE, [ATTRIBUTE], GENERATOR) for _ in range(3)]
    once = composition.tight([_without_generator(r)[0] for r in rounds] + [GENERATOR])
    thrice = composition.tight(rounds)
    assert once.epsilon < thrice.epsilon  # counting ε_g three times overstates the spending
    assert once.epsilon > composition.tight([_without_generator(r)[0] for r in rounds]).epsilon
