"""The privacy ledger: every (ε, δ) spent on a tenant's dataset, composed per dataset, and a charge that would
take a dataset past its budget refused (FAILED_PRECONDITION, PRIVACY_BUDGET_EXHAUSTED) before the work it pays for.

    ledger = PrivacyLedger(path)
    ledger.charge("acme", "faces", Cost(0.8, 1e-6, "anonymize preview"), budget=Cost(8.0, 1e-5), spent_by="op-1")
    ledger.spent("acme", "faces")       # Cost(ε, δ) so far, by basic composition

The check and the entry are one SQLite transaction (BEGIN IMMEDIATE), so two charges racing for the last of a
budget cannot both pass. Entries are never edited or deleted: the ledger is what was spent.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from umbra.privacy.mechanisms import Cost
from umbra.runtime.errors import BudgetExhausted, InvalidInput

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, dataset TEXT NOT NULL, epsilon REAL NOT NULL,
    delta REAL NOT NULL, mechanism TEXT NOT NULL, spent_by TEXT NOT NULL, create_time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_dataset ON entries (tenant, dataset);
"""


@dataclass(frozen=True)
class Entry:
    tenant: str
    dataset: str
    cost: Cost
    spent_by: str
    create_time: float


class PrivacyLedger:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def spent(self, tenant: str, dataset: str) -> Cost:
        rows = self._db.execute("SELECT epsilon, delta FROM entries WHERE tenant = ? AND dataset = ?",
                                (tenant, dataset)).fetchall()
        return Cost(math.fsum(r[0] for r in rows), math.fsum(r[1] for r in rows), "composition")

    def entries(self, tenant: str, dataset: str) -> list[Entry]:
        rows = self._db.execute("SELECT tenant, dataset, epsilon, delta, mechanism, spent_by, create_time FROM entries "
                                "WHERE tenant = ? AND dataset = ? ORDER BY id", (tenant, dataset)).fetchall()
        return [Entry(r[0], r[1], Cost(r[2], r[3], r[4]), r[5], r[6]) for r in rows]

    def charge(self, tenant: str, dataset: str, cost: Cost, *, budget: Cost, spent_by: str) -> Cost:
        """Records `cost` against the dataset and returns the total spent, or refuses when the total would pass
        the budget's ε or δ; nothing is recorded then. A second charge with the same non-empty `spent_by` (a
        retried request) records nothing and returns the total."""
        if not (cost.epsilon >= 0 and cost.delta >= 0 and math.isfinite(cost.epsilon) and cost.delta < 1):
            raise InvalidInput("cost", "ε must be finite and at least 0, δ in [0, 1)")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if spent_by and self._db.execute(
                        "SELECT 1 FROM entries WHERE tenant = ? AND dataset = ? AND spent_by = ?",
                        (tenant, dataset, spent_by)).fetchone():
                    self._db.execute("COMMIT")  # a retry of a request already charged: not charged twice
                    return self.spent(tenant, dataset)
                before = self.spent(tenant, dataset)
                after = Cost(math.fsum([before.epsilon, cost.epsilon]), math.fsum([before.delta, cost.delta]),
                             "composition")
                if after.epsilon > budget.epsilon or after.delta > budget.delta:
                    raise BudgetExhausted(
                        f"datasets/{dataset} has spent ε={before.epsilon:.6g}, δ={before.delta:.3g} of its budget "
                        f"(ε={budget.epsilon:g}, δ={budget.delta:g}); this request needs ε={cost.epsilon:.6g}, "
                        f"δ={cost.delta:.3g} more",
                        metadata={"dataset": dataset, "spent_epsilon": repr(before.epsilon),
                                  "requested_epsilon": repr(cost.epsilon), "budget_epsilon": repr(budget.epsilon)})
                self._db.execute("INSERT INTO entries (tenant, dataset, epsilon, delta, mechanism, spent_by, "
                                 "create_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (tenant, dataset, cost.epsilon, cost.delta, cost.mechanism, spent_by, time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return after

    def close(self) -> None:
        self._db.close()
