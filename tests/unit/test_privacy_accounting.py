"""Every ε computation against values worked by hand (the ledger's composition: test_privacy_ledger.py)."""

from __future__ import annotations

import math

import pytest

from umbra.privacy import mechanisms as m
from umbra.runtime.errors import InvalidInput


def test_randomized_response_by_hand():
    # k = 2 at ε = ln 3: keep with 3 / (3 + 1) = 0.75; k = 5 at ε = ln 4: 4 / (4 + 4) = 0.5
    assert m.randomized_response_keep_probability(math.log(3), 2) == pytest.approx(0.75, abs=1e-15)
    assert m.randomized_response_keep_probability(math.log(4), 5) == pytest.approx(0.5, abs=1e-15)
    assert m.randomized_response_keep_probability(0.0, 4) == pytest.approx(0.25)  # ε = 0: uniform, says nothing
    assert m.randomized_response_epsilon(0.75, 2) == pytest.approx(math.log(3), abs=1e-15)
    assert m.randomized_response_epsilon(0.5, 5) == pytest.approx(math.log(4), abs=1e-15)
    with pytest.raises(InvalidInput):
        m.randomized_response_keep_probability(1.0, 1)


def test_clipped_laplace_by_hand():
    assert m.laplace_scale(0, 100, 1.0) == 100.0  # ages clipped to [0, 100] at ε = 1
    assert m.laplace_scale(10, 90, 4.0) == 20.0
    with pytest.raises(InvalidInput):
        m.laplace_scale(0, 100, 0.0)


def test_gaussian_delta_and_epsilon_by_hand():
    # μ = 1, ε = 1: Φ(-0.5) - e·Φ(-1.5) = 0.3085375387 - 2.7182818285 × 0.0668072013 = 0.1269377
    assert m.gaussian_delta(1.0, 1.0) == pytest.approx(0.3085375387 - 2.7182818285 * 0.0668072013, abs=1e-9)
    epsilon = m.gaussian_epsilon(1.0, 0.3085375387 - 2.7182818285 * 0.0668072013)
    assert epsilon == pytest.approx(1.0, abs=1e-6)
    # never rounded in our favour: the δ at the returned ε is at most the δ asked for
    assert m.gaussian_delta(m.gaussian_epsilon(2.0, 1e-5), 2.0) <= 1e-5
    # μ = 0.5, ε = 0: δ = Φ(0.25) - Φ(-0.25) = 0.5987063257 - 0.4012936743 = 0.1974126514; below that δ, ε > 0
    assert m.gaussian_delta(0.0, 0.5) == pytest.approx(0.1974126514, abs=1e-9)
    assert m.gaussian_epsilon(0.5, 0.2) == 0.0
    assert m.gaussian_epsilon(0.5, 0.19) > 0


def test_image_noise_mu_by_hand():
    # dp-promise's check: at 32x32 (d = 3072), ᾱ = 2.75e-4, pixels in [-1, 1]: μ² = 4dᾱ/(1-ᾱ) = 3.3801
    mu = m.image_noise_mu(2.75e-4, 3 * 32 * 32)
    assert mu ** 2 == pytest.approx(4 * 3072 * 2.75e-4 / (1 - 2.75e-4), rel=1e-12)
    assert mu ** 2 == pytest.approx(3.380, abs=1e-3)
    assert m.image_noise_mu(0.5, 1, pixel_range=1.0) == pytest.approx(1.0)  # sqrt(.5)·1·1/sqrt(.5)
    with pytest.raises(InvalidInput):
        m.image_noise_mu(1.0, 10)


def test_gaussian_epsilon_of_a_lightly_noised_image_does_not_overflow():
    # μ = 100: ε ≈ μ²/2 + 4.75 μ ≈ 5,475 at δ = 1e-6; e^ε alone would overflow a float
    epsilon = m.gaussian_epsilon(100.0, 1e-6)
    assert 5000 < epsilon < 6000 and math.isfinite(epsilon)
    assert m.gaussian_delta(epsilon, 100.0) <= 1e-6 < m.gaussian_delta(epsilon - 1e-3, 100.0)
