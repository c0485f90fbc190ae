"""One tenant's long privacy history costs the others nothing: while the ledger composes a tenant's 10^5-step
DP-SGD charge (seconds under the PRV accountant), another tenant's reserve and balance answer at once, and the
first tenant's next charges find the composition cached.

The coordinator's servicer hands these calls straight to umbra.privacy.ledger.PrivacyLedger, and what made them
wait is the database's one writer: so this drives a real PrivacyLedger over a real SQLite file, with a transaction
like the coordinator's (one writer at a time, BEGIN IMMEDIATE), from several threads as the gRPC server would."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from umbra.privacy import ledger
from umbra.privacy.ledger import PrivacyLedger
from umbra.privacy.mechanisms import Cost

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TENANTS = ("CREATE TABLE tenants (id TEXT PRIMARY KEY, display_name TEXT NOT NULL, state TEXT NOT NULL, "
           "budget_epsilon DOUBLE PRECISION NOT NULL, budget_delta DOUBLE PRECISION NOT NULL, "
           "create_time DOUBLE PRECISION NOT NULL);")
# a sample rate no other test uses, so that no composition of it is cached in this process yet
LONG_RUN = Cost(8.0, 1e-6, "dp_sgd", "a long training run", {"noise_multiplier": 1.0, "sample_rate": 0.0101,
                                                             "steps": 100_000.0}, accountant="prv")
SMALL = Cost(0.1, 0.0, "randomized_response", "attribute gender", {"k": 2.0}, accountant="analytic")
QUICK = 1.0  # seconds: an answer that waited for the long composition takes 5-25 s


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


def timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def test_a_long_history_does_not_hold_up_other_tenants(tmp_path):
    db = Database(tmp_path / "coordinator.sqlite3")
    db.connection.execute("INSERT INTO tenants VALUES ('a', 'A', 'ACTIVE', 100.0, 1e-5, 0), "
                          "('b', 'B', 'ACTIVE', 100.0, 1e-5, 0)")
    # tenant A's long run, committed by an earlier coordinator process: nothing of it is composed in this one
    db.connection.execute("INSERT INTO ledger_entries (id, tenant, dataset, request_id, spent_by, state, epsilon, "
                          "delta, cost, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          ("000000000001run", "a", "faces", "train", "test", "COMMITTED", LONG_RUN.epsilon,
                           LONG_RUN.delta, json.dumps(LONG_RUN.to_dict()), 0.0, 0.0))
    charges = PrivacyLedger(db.transaction)
    outcome: dict = {}

    def charge_a() -> None:
        try:
            outcome["seconds"] = timed(lambda: charges.reserve("a", "faces", SMALL, request_id="a1", spent_by="t"))
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            outcome["error"] = exc

    composing = threading.Thread(target=charge_a)
    composing.start()
    time.sleep(1.0)  # A's reservation is composing its history by now
    others = {"B's reserve": timed(lambda: charges.reserve("b", "faces", SMALL, request_id="b1", spent_by="t")),
              "B's balance": timed(lambda: charges.balance("b"))}
    still_composing = composing.is_alive()
    composing.join(timeout=240)
    assert "error" not in outcome and "seconds" in outcome, outcome
    assert all(seconds < QUICK for seconds in others.values()), (others, f"A's took {outcome['seconds']:.1f} s")
    assert still_composing, f"A's composition took only {outcome['seconds']:.1f} s: too quick to test with"
    # the same tenant's next charge and its balance find A's history composed
    later = {"A's second reserve": timed(lambda: charges.reserve("a", "faces", SMALL, request_id="a2", spent_by="t")),
             "A's balance": timed(lambda: charges.balance("a"))}
    assert all(seconds < QUICK for seconds in later.values()), later
    assert charges.balance("a").spent.epsilon == 8.2  # the long run counts at its declared ε, the rest adds up
    db.connection.close()
