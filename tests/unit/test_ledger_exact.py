"""The ledger counts what it composes, and so does a commit's check: a final cost whose parts (a component's ε, a
Gaussian's μ, a DP-SGD run's steps) compose to more than the reservation's is refused, with nothing changed, even
when its declared (ε, δ) is the reserved one. And composition's cache answers exactly what composing again does.

The ledger runs on a plain SQLite database holding its own table and a minimal `tenants` table, with a transaction
like the coordinator's (one writer, BEGIN IMMEDIATE)."""

from __future__ import annotations

import math
import sqlite3
import threading
from contextlib import contextmanager

import pytest

from umbra.privacy import composition, ledger
from umbra.privacy.ledger import Budget, PrivacyLedger
from umbra.privacy.mechanisms import Cost, gaussian_epsilon
from umbra.runtime.errors import InvalidInput

TENANTS = ("CREATE TABLE tenants (id TEXT PRIMARY KEY, display_name TEXT NOT NULL, state TEXT NOT NULL, "
           "budget_epsilon DOUBLE PRECISION NOT NULL, budget_delta DOUBLE PRECISION NOT NULL, "
           "create_time DOUBLE PRECISION NOT NULL);")


class Database:
    def __init__(self, path):
        self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.connection.executescript(TENANTS + ledger.SCHEMA)
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self):
        with self._lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "ledger.sqlite3")
    database.connection.execute("INSERT INTO tenants VALUES ('acme', 'Acme', 'ACTIVE', 10.0, 1e-5, 0)")
    yield database
    database.connection.close()


def rr(epsilon: float) -> Cost:
    return Cost(epsilon, 0.0, "randomized_response", "attribute", {"k": 2.0}, accountant="analytic")


def gaussian(mu: float, epsilon: float, delta: float = 1e-6) -> Cost:
    return Cost(epsilon, delta, "gaussian", "image", {"mu": mu}, accountant="gdp")


def dp_sgd(steps: int, epsilon: float, delta: float = 1e-6) -> Cost:
    return Cost(epsilon, delta, "dp_sgd", "training", {"noise_multiplier": 1.0, "sample_rate": 0.01,
                                                        "steps": float(steps)}, accountant="prv")


def stored(db, request_id: str) -> tuple:
    return db.connection.execute("SELECT state, epsilon, delta, cost, update_time FROM ledger_entries "
                                 "WHERE request_id = ?", (request_id,)).fetchone()


def test_a_commit_declaring_the_reserved_epsilon_cannot_carry_a_part_of_epsilon_50(db):
    charges = PrivacyLedger(db.transaction)
    reserved = composition.basic([rr(1.0)], "per image")
    charges.reserve("acme", "faces", reserved, request_id="r1", spent_by="op")
    before = stored(db, "r1")
    forged = Cost(1.0, 0.0, "composition", "per image", components=(rr(50.0),), accountant="basic")
    with pytest.raises(InvalidInput, match="count for more than the reserved") as refused:
        charges.commit("acme", "r1", forged)
    assert refused.value.field == "cost"
    assert stored(db, "r1") == before and charges.balance("acme").spent.epsilon == 1.0  # nothing changed
    lower = composition.basic([rr(0.5)], "per image")
    first = charges.commit("acme", "r1", lower)
    again = charges.commit("acme", "r1", lower)  # a retry: the same entry, nothing more
    assert (again.id, again.state, again.cost) == (first.id, "COMMITTED", lower)
    with pytest.raises(InvalidInput, match="count for more"):  # nor by committing a second time
        charges.commit("acme", "r1", Cost(0.5, 0.0, "composition", "per image", components=(rr(50.0),)))
    assert charges.balance("acme").spent.epsilon == 0.5


def test_gaussian_commits_with_a_larger_mu_are_refused(db):
    # Each reservation declares ε 4.5 but is μ = 0.01, which composes to almost nothing; committed at μ = 50 with
    # the same declared ε, the three used to count 13.5 (basic composition) against a budget of 10.
    charges = PrivacyLedger(db.transaction)
    for i in range(3):
        charges.reserve("acme", "faces", gaussian(0.01, 4.5), request_id=f"g{i}", spent_by="op")
    spent = charges.balance("acme").spent
    assert spent.epsilon < 1.0
    for i in range(3):
        with pytest.raises(InvalidInput, match="cost: its parts"):
            charges.commit("acme", f"g{i}", gaussian(50.0, 4.5))
    assert charges.balance("acme").spent == spent
    assert {stored(db, f"g{i}")[0] for i in range(3)} == {"RESERVED"}
    quieter = gaussian(0.005, gaussian_epsilon(0.005, 1e-6))  # more noise than reserved: fine
    assert charges.commit("acme", "g0", quieter).cost == quieter
    assert charges.balance("acme").spent.epsilon <= spent.epsilon


def test_a_dp_sgd_commit_with_more_steps_is_refused(db):
    charges = PrivacyLedger(db.transaction)
    charges.reserve("acme", "faces", dp_sgd(100, 5.0), request_id="train", spent_by="op")
    with pytest.raises(InvalidInput, match="count for more"):
        charges.commit("acme", "train", dp_sgd(1000, 5.0))
    assert charges.commit("acme", "train", dp_sgd(80, 5.0)).state == "COMMITTED"


def test_a_commit_is_checked_against_the_tenant_budget_and_a_negative_part_is_refused(db):
    charges = PrivacyLedger(db.transaction)
    charges.reserve("acme", "faces", rr(8.0), request_id="r1", spent_by="op")
    db.connection.execute("UPDATE tenants SET budget_epsilon = 5.0 WHERE id = 'acme'")
    with pytest.raises(InvalidInput, match="more than the tenant budget"):
        charges.commit("acme", "r1", rr(6.0))
    assert stored(db, "r1")[:2] == ("RESERVED", 8.0)
    charges.commit("acme", "r1", rr(4.0))
    refund = Cost(0.0, 0.0, "composition", "a refund", components=(rr(3.0), rr(-3.0)))
    with pytest.raises(InvalidInput, match=r"cost.components\[1\].epsilon"):
        charges.reserve("acme", "faces", refund, request_id="r2", spent_by="op")
    assert charges.reserve("acme", "faces", rr(1.0), request_id="r3", spent_by="op")[1] == Budget(0.0, 1e-5)


def test_cached_compositions_are_bit_identical_and_order_free():
    costs = [gaussian(0.7, 1.0), dp_sgd(300, 4.0), rr(0.25), gaussian(1.3, 2.0, 2e-6), dp_sgd(50, 2.0, 3e-6)]
    composition.clear_cache()
    assert not composition.cached(costs)
    cold = composition.tight(costs)
    assert composition.cached(costs) and composition.cached(costs[::-1])
    warm = composition.tight(costs)
    composition.clear_cache()
    reordered = composition.tight(costs[::-1])
    for other in (warm, reordered):
        assert other.epsilon.hex() == cold.epsilon.hex() and other.delta.hex() == cold.delta.hex()
        assert [p.epsilon.hex() for p in other.components] == [p.epsilon.hex() for p in cold.components]
    assert warm == cold  # the same parts, in the same order, as well
    assert cold.epsilon < composition.basic(costs).epsilon and math.isfinite(cold.epsilon)


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(composition, "CACHE_SIZE", 2)
    composition.clear_cache()
    runs = [[gaussian(0.1 * (i + 1), 1.0)] for i in range(3)]
    for costs in runs:
        composition.tight(costs)
    assert [composition.cached(costs) for costs in runs] == [False, True, True]
