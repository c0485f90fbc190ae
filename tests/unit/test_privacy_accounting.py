"""Every ε computation against values worked by hand, and the ledger's composition and refusal."""

from __future__ import annotations

import math
import threading

import pytest

from umbra.privacy import mechanisms as m
from umbra.privacy.ledger import PrivacyLedger
from umbra.runtime.errors import BudgetExhausted, InvalidInput


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


def test_basic_composition_adds_up():
    total = m.compose([m.Cost(0.5, 1e-6), m.Cost(1.25, 0.0), m.Cost(0.25, 2e-6)])
    assert (total.epsilon, total.delta) == (2.0, pytest.approx(3e-6))


def test_ledger_composes_per_dataset_and_refuses_past_the_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite3")
    budget = m.Cost(2.0, 1e-5)
    assert ledger.charge("acme", "faces", m.Cost(1.5, 1e-6, "preview"), budget=budget, spent_by="op-1").epsilon == 1.5
    ledger.charge("acme", "other", m.Cost(1.5, 0.0), budget=budget, spent_by="op-2")  # another dataset's budget
    with pytest.raises(BudgetExhausted, match="needs ε=0.6, δ=0 more") as refused:
        ledger.charge("acme", "faces", m.Cost(0.6, 0.0), budget=budget, spent_by="op-3")
    assert refused.value.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert ledger.spent("acme", "faces") == m.Cost(1.5, 1e-6, "composition")  # the refused charge left no entry
    ledger.charge("acme", "faces", m.Cost(0.5, 0.0), budget=budget, spent_by="op-4")  # exactly the budget: allowed
    assert [e.spent_by for e in ledger.entries("acme", "faces")] == ["op-1", "op-4"]
    with pytest.raises(BudgetExhausted):
        ledger.charge("acme", "faces", m.Cost(0.0, 1e-5), budget=budget, spent_by="op-5")  # δ past its budget


def test_racing_charges_cannot_both_take_the_last_of_a_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite3")
    outcomes: list[str] = []

    def charge(name: str) -> None:
        try:
            ledger.charge("acme", "faces", m.Cost(0.6), budget=m.Cost(1.0), spent_by=name)
            outcomes.append("charged")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=charge, args=(f"op-{i}",)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["charged"] + ["refused"] * 7
    assert ledger.spent("acme", "faces").epsilon == 0.6


def test_a_retried_request_is_charged_once(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite3")
    budget = m.Cost(10.0, 1e-5)
    ledger.charge("acme", "faces", m.Cost(1.5, 1e-6, "gaussian"), budget=budget, spent_by="request-1")
    again = ledger.charge("acme", "faces", m.Cost(1.5, 1e-6, "gaussian"), budget=budget, spent_by="request-1")
    assert again.epsilon == 1.5 and len(ledger.entries("acme", "faces")) == 1
    ledger.charge("acme", "faces", m.Cost(1.5, 1e-6, "gaussian"), budget=budget, spent_by="request-2")
    assert ledger.spent("acme", "faces").epsilon == 3.0


def test_gaussian_epsilon_of_a_lightly_noised_image_does_not_overflow():
    # μ = 100: ε ≈ μ²/2 + 4.75 μ ≈ 5,475 at δ = 1e-6; e^ε alone would overflow a float
    epsilon = m.gaussian_epsilon(100.0, 1e-6)
    assert 5000 < epsilon < 6000 and math.isfinite(epsilon)
    assert m.gaussian_delta(epsilon, 100.0) <= 1e-6 < m.gaussian_delta(epsilon - 1e-3, 100.0)
