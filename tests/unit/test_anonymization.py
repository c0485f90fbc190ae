"""The intensity table, the attribute mechanisms' behaviour, and each image's cost against values worked by
hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from umbra.anonymization import privatize
from umbra.anonymization.intensity import TABLE, Plan, plan_for
from umbra.diffusion.attributes import Attribute
from umbra.privacy import mechanisms
from umbra.runtime.errors import InvalidInput

GENDER = Attribute("gender", ("0", "1"))
RACE = Attribute("race", ("0", "1", "2", "3", "4"))
AGE = Attribute("age", ("0-10",), numeric=True)


def test_table_rows_and_interpolation():
    for intensity, latent, pixel, guidance, epsilon, steps in TABLE:
        plan = plan_for(intensity)
        assert (plan.timestep, plan.guidance, plan.attribute_epsilon, plan.steps) == (latent, guidance, epsilon,
                                                                                       steps)
        assert plan_for(intensity, design="pixel") == Plan(intensity, pixel, guidance, epsilon, steps)
    middle = plan_for(0.625)  # halfway between the 0.5 and 0.75 rows
    assert middle.timestep == 750 and middle.guidance == 3.5 and middle.attribute_epsilon == pytest.approx(0.65)
    assert plan_for(0.625, design="pixel").timestep == 600
    assert plan_for(0.5, steps=3).steps == 3
    for bad in (-0.01, 1.01, math.nan):
        with pytest.raises(InvalidInput) as error:
            plan_for(bad)
        assert error.value.field == "settings.intensity"
    # more intensity never means more ε for an attribute, nor less noise
    for design in ("latent", "pixel"):
        plans = [plan_for(i / 20, design=design) for i in range(21)]
        assert all(a.attribute_epsilon >= b.attribute_epsilon and a.timestep <= b.timestep
                   for a, b in zip(plans, plans[1:], strict=False))


def test_randomized_response_keeps_the_value_at_the_rate_its_epsilon_allows():
    rng = np.random.default_rng(0)
    epsilon = math.log(3)  # k = 2: keep with 3/4 by hand
    kept = np.mean([privatize.release(GENDER, "1", epsilon, rng) == "1" for _ in range(20_000)])
    assert kept == pytest.approx(0.75, abs=0.01)
    race = [privatize.release(RACE, "2", 0.0, rng) for _ in range(20_000)]  # ε = 0: uniform
    assert all(np.mean([r == v for r in race]) == pytest.approx(0.2, abs=0.01) for v in RACE.values)
    cost = privatize.attribute_cost(RACE, math.log(3))
    assert cost.parameters["keep_probability"] == pytest.approx(3 / 7)  # e^ε / (e^ε + k - 1) = 3 / (3 + 4)


def test_age_goes_through_the_clipped_laplace_mechanism():
    rng = np.random.default_rng(1)
    released = np.array([float(privatize.release(AGE, "250", 1.0, rng)) for _ in range(4000)])
    assert released.min() >= 0 and released.max() <= 100  # clipped to the public range, before and after
    assert np.median(released) == pytest.approx(100, abs=1)  # 250 clipped to 100, then noise of scale 100
    uniform = np.array([float(privatize.release(AGE, "30", 0.0, rng)) for _ in range(4000)])
    assert uniform.mean() == pytest.approx(50, abs=3)
    assert privatize.attribute_cost(AGE, 1.0).parameters["scale"] == 100.0


def test_image_cost_at_dp_promise_timestep_by_hand():
    # dp-promise at 32 px: ᾱ_900 = 2.75e-4, so μ² = 4 d ᾱ / (1 - ᾱ) = 3.380 (d = 3,072)
    cost = privatize.image_cost(2.75e-4, 900, 3 * 32 * 32)
    assert cost.parameters["mu"] ** 2 == pytest.approx(3.380, abs=1e-3)
    assert cost.delta == privatize.IMAGE_DELTA
    # the smallest ε whose δ(ε) is at most 1e-6, rounded up
    assert mechanisms.gaussian_delta(cost.epsilon, cost.parameters["mu"]) <= 1e-6
    assert mechanisms.gaussian_delta(cost.epsilon - 1e-6, cost.parameters["mu"]) > 1e-6
    assert 8.5 < cost.epsilon < 10.5


def test_per_image_cost_adds_every_mechanism():
    image = privatize.image_cost(0.01, 650, 3 * 32 * 32)
    attributes = [privatize.attribute_cost(GENDER, 0.3), privatize.attribute_cost(AGE, 0.3)]
    generator = mechanisms.Cost(5.0, 1e-5, "dp_sgd")
    total = privatize.per_image(image, attributes, generator)
    assert total.epsilon == pytest.approx(image.epsilon + 0.6 + 5.0)
    assert total.delta == pytest.approx(1e-6 + 1e-5) and len(total.components) == 4
