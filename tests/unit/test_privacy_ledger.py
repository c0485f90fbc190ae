"""Composition (basic and tight) against values worked by hand, the accountant registry, and the ledger's
reserve → commit → release on the coordinator's own SQLite database."""

from __future__ import annotations

import math
import threading

import pytest
from scipy.stats import norm

from umbra.privacy import composition
from umbra.privacy.accountants import create_accountant
from umbra.privacy.ledger import Budget, PrivacyLedger
from umbra.privacy.mechanisms import Cost, gaussian_epsilon
from umbra.runtime.errors import BudgetExhausted, Conflict, FailedPrecondition, InvalidInput, NotFound
from umbra.services.coordinator.db import CoordinatorDB, TenantRow


def gaussian(mu: float, delta: float = 1e-6) -> Cost:
    return Cost(gaussian_epsilon(mu, delta), delta, "gaussian", "image", {"mu": mu}, accountant="gdp")


def response(epsilon: float) -> Cost:
    return Cost(epsilon, 0.0, "randomized_response", "attribute", {"k": 2}, accountant="analytic")


def dp_sgd(sigma: float, rate: float, steps: int, epsilon: float, delta: float) -> Cost:
    return Cost(epsilon, delta, "dp_sgd", "training", {"noise_multiplier": sigma, "sample_rate": rate,
                                                        "steps": steps}, accountant="prv")


def test_basic_composition_adds_up():
    total = composition.basic([Cost(0.5, 1e-6), Cost(1.25, 0.0), Cost(0.25, 2e-6)])
    assert (total.epsilon, total.delta) == (2.0, pytest.approx(3e-6))


def test_tight_composition_of_gaussians_is_gdp_by_hand():
    # μ = 3 and μ = 4 compose to exactly μ = 5 (3² + 4² = 5²); at δ = 1e-6 + 1e-6 its ε solves
    # Φ(-ε/5 + 2.5) - e^ε Φ(-ε/5 - 2.5) = 2e-6, checked here straight from the formula.
    costs = [gaussian(3.0), gaussian(4.0)]
    tight, basic = composition.tight(costs), composition.basic(costs)
    assert tight.delta == basic.delta == pytest.approx(2e-6)
    eps = tight.epsilon
    assert norm.cdf(-eps / 5 + 2.5) - math.exp(eps) * norm.cdf(-eps / 5 - 2.5) <= 2e-6
    assert norm.cdf(-(eps - 1e-6) / 5 + 2.5) - math.exp(eps - 1e-6) * norm.cdf(-(eps - 1e-6) / 5 - 2.5) > 2e-6
    assert basic.epsilon == gaussian_epsilon(3.0, 1e-6) + gaussian_epsilon(4.0, 1e-6)
    assert tight.epsilon < basic.epsilon
    # four μ = 0.5 mechanisms are μ = 1: at δ = Φ(0.5) - Φ(-0.5) = 0.6914624613 - 0.3085375387 = 0.3829249226
    # (split in four) ε is 0, although each alone has ε > 0 at its quarter of δ
    quarter = (0.6914624613 - 0.3085375387) / 4 + 1e-10
    four = [gaussian(0.5, quarter) for _ in range(4)]
    assert composition.tight(four).epsilon == 0.0 < composition.basic(four).epsilon


def test_tight_composition_adds_pure_mechanisms_and_never_passes_basic():
    image, gender, age = gaussian(2.0), response(math.log(3)), Cost(1.0, 0.0, "laplace", "age", {"scale": 100.0})
    preview = composition.basic([image, gender, age], "per image")  # a charge as the anonymizer makes it
    tight = composition.tight([preview, preview])
    # the two images' Gaussians compose to μ = 2√2; the pure ε add up: 2 ln 3 + 2
    assert tight.epsilon == pytest.approx(gaussian_epsilon(2 * math.sqrt(2), 2e-6) + 2 * math.log(3) + 2.0)
    assert tight.delta == composition.basic([preview, preview]).delta
    assert tight.epsilon <= composition.basic([preview, preview]).epsilon
    assert tight.accountant == "tight" and {c.accountant for c in tight.components} == {"gdp", "basic"}


def test_tight_composition_of_dp_sgd_uses_prv_and_a_cost_without_parameters_is_basic():
    from opacus.accountants import PRVAccountant

    runs = [dp_sgd(1.0, 0.02, 500, 3.0, 1e-6), dp_sgd(1.0, 0.02, 500, 3.0, 1e-6)]
    reference = PRVAccountant()
    reference.history = [(1.0, 0.02, 500), (1.0, 0.02, 500)]
    tight = composition.tight(runs)
    assert tight.epsilon == pytest.approx(min(6.0, reference.get_epsilon(2e-6)), rel=1e-6)
    assert tight.epsilon < 6.0
    opaque = Cost(2.0, 1e-6, "dp_sgd", "a generator's target ε, parameters unknown")
    assert composition.tight([opaque]).epsilon == 2.0


def test_accountant_registry_refuses_unknown_names_and_costs():
    with pytest.raises(ValueError, match="unknown accountant 'moments'"):
        create_accountant("moments")
    with pytest.raises(ValueError, match="cannot compose"):
        create_accountant("gdp").step(response(1.0))


# -- the ledger ---------------------------------------------------------------------------------------------------

@pytest.fixture
def ledger(tmp_path):
    db = CoordinatorDB(tmp_path / "coordinator.sqlite3")
    db.insert_tenant(TenantRow("acme", "Acme", "ACTIVE", 2.0, 1e-5, 0.0))
    yield PrivacyLedger(db.transaction)
    db.close()


def test_reserve_commit_release_and_the_budget(ledger):
    entry, left = ledger.reserve("acme", "faces", response(1.5), request_id="r1", spent_by="op-1")
    assert entry.state == "RESERVED" and left == Budget(0.5, 1e-5)
    ledger.commit("acme", "r1")
    ledger.reserve("acme", "other", response(0.25), request_id="r2", spent_by="op-2")  # the same tenant's budget
    with pytest.raises(BudgetExhausted, match="has ε=0.25, δ=1e-05 left") as refused:
        ledger.reserve("acme", "faces", response(0.5), request_id="r3", spent_by="op-3")
    assert refused.value.metadata["remaining_epsilon"] == repr(0.25)
    assert [e.request_id for e in ledger.entries("acme")] == ["r2", "r1"]  # the refused charge left nothing
    ledger.release("acme", "r2")  # the work failed: its reservation stops counting
    ledger.reserve("acme", "faces", response(0.5), request_id="r3", spent_by="op-3")  # exactly the budget
    balance = ledger.balance("acme")
    assert (balance.spent.epsilon, balance.remaining, balance.reserved_entries, balance.committed_entries) == (
        2.0, Budget(0.0, 1e-5), 1, 1)
    assert ledger.balance("acme", "faces").spent.epsilon == 2.0 and ledger.balance("acme", "other").spent.epsilon == 0
    ledger.release("acme", "r3")
    with pytest.raises(BudgetExhausted, match="request budget"):  # a request's own, lower limit
        ledger.reserve("acme", "faces", response(0.5), request_id="r4", spent_by="op-4", limit=Budget(1.6, 1e-5))


def test_a_retried_request_is_charged_once_and_a_released_one_can_run_again(ledger):
    first, _ = ledger.reserve("acme", "faces", response(0.5), request_id="r1", spent_by="op-1")
    again, _ = ledger.reserve("acme", "faces", response(0.5), request_id="r1", spent_by="op-1")
    assert again.id == first.id and ledger.balance("acme").spent.epsilon == 0.5
    with pytest.raises(Conflict):
        ledger.reserve("acme", "other", response(0.5), request_id="r1", spent_by="op-1")
    ledger.release("acme", "r1")
    assert ledger.release("acme", "r1").state == "RELEASED"  # releasing again is a no-op
    assert ledger.reserve("acme", "faces", response(0.5), request_id="r1", spent_by="op-1")[0].state == "RESERVED"
    assert len(ledger.entries("acme")) == 1


def test_commit_takes_a_lower_final_cost_only_and_a_committed_charge_is_not_released(ledger):
    ledger.reserve("acme", "faces", Cost(1.0, 1e-6, "dp_sgd"), request_id="train", spent_by="op")
    with pytest.raises(InvalidInput, match="exceeds the reserved"):
        ledger.commit("acme", "train", Cost(1.2, 1e-6, "dp_sgd"))
    assert ledger.commit("acme", "train", Cost(0.8, 1e-6, "dp_sgd")).cost.epsilon == 0.8
    with pytest.raises(FailedPrecondition):
        ledger.release("acme", "train")
    with pytest.raises(NotFound):
        ledger.commit("acme", "nothing")
    with pytest.raises(InvalidInput, match="cost.epsilon"):
        ledger.reserve("acme", "faces", Cost(math.inf), request_id="inf", spent_by="op")
    with pytest.raises(NotFound):
        ledger.reserve("nobody", "faces", response(0.1), request_id="x", spent_by="op")


def test_racing_reservations_cannot_both_take_the_last_of_a_budget(ledger):
    outcomes: list[str] = []

    def reserve(name: str) -> None:
        try:
            ledger.reserve("acme", "faces", response(1.5), request_id=name, spent_by=name)
            outcomes.append("reserved")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=reserve, args=(f"r{i}",)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["refused"] * 7 + ["reserved"]
    assert ledger.balance("acme").spent.epsilon == 1.5
