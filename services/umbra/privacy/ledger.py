"""The privacy ledger: every (ε, δ) a tenant's work spends, composed against the tenant's one budget.

    ledger = PrivacyLedger(db.transaction)          # the coordinator's SQL database
    entry, remaining = ledger.reserve("acme", "faces", cost, request_id="anonymizer:Anonymize:…", spent_by="…")
    ...the work...
    ledger.commit("acme", entry.request_id)         # or ledger.release(...) when the work failed
    ledger.balance("acme")                          # Balance: budget, spent (tight and basic), remaining

Reserve → commit → release: a worker reserves before the work that spends privacy, so two replicas racing for the
last of a budget cannot both pass (the check and the insert are one transaction, which first locks the tenant's
row). Reserved and committed entries count; a released one does not. A request_id names one charge: a retry
returns the same entry and charges nothing more. Entries are never deleted: the ledger is what was spent.

Spending is composed over all of a tenant's entries, whatever their dataset (the same people may be in several
datasets, so nothing is assumed to be disjoint), with umbra.privacy.composition.tight, and refused when the
result would pass the tenant's budget or the lower limit the request carries. The SQL is plain (one table, no
engine-specific types) so it runs on SQLite and PostgreSQL alike.

A commit may lower a charge, never raise it, and that is checked on what the ledger counts: the composition of the
tenant's entries with the committed cost in place of the reserved one may not pass (in ε or in δ) the composition
with the reserved cost, and the committed cost composed alone may not pass the tenant's budget. The declared
(ε, δ) alone is not enough: a cost's parts and parameters (a Gaussian's μ, a DP-SGD run's steps) are what is
composed, so a commit that declared the reserved ε but carried a part of ε 50 used to be counted at 50. Every part
of a cost is checked as the cost itself is (finite ε ≥ 0, δ in [0, 1)).

Composition can take seconds (a long DP-SGD history under the PRV accountant), and a write transaction holds the
coordinator's one writer lock. So nothing is composed inside one unless it is cached already
(umbra.privacy.composition keeps each accountant's answer): a transaction that finds a composition it needs
uncached is rolled back, the composition is computed outside it, and the transaction runs again, checking
everything afresh; only the last of _ATTEMPTS composes inside whatever it finds. One tenant's long history
therefore costs other tenants nothing, and the same tenant's later charges find it cached.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost
from umbra.runtime import metrics
from umbra.runtime.errors import BudgetExhausted, Conflict, FailedPrecondition, InvalidInput, NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_entries (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, dataset TEXT NOT NULL, request_id TEXT NOT NULL,
    spent_by TEXT NOT NULL, state TEXT NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
    cost TEXT NOT NULL, create_time DOUBLE PRECISION NOT NULL, update_time DOUBLE PRECISION NOT NULL,
    UNIQUE (tenant, request_id));
CREATE INDEX IF NOT EXISTS ledger_entries_tenant ON ledger_entries (tenant, state);
"""
RESERVED, COMMITTED, RELEASED = "RESERVED", "COMMITTED", "RELEASED"
_COLUMNS = "id, tenant, dataset, request_id, spent_by, state, cost, create_time, update_time"
_ATTEMPTS = 3  # write transactions that leave to compose outside; the last one composes inside
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    id: str  # time-ordered, so ordering by id orders by creation
    tenant: str
    dataset: str
    request_id: str
    spent_by: str
    state: str
    cost: Cost
    create_time: float
    update_time: float


@dataclass(frozen=True)
class Budget:
    epsilon: float
    delta: float

    def less(self, spent: Cost) -> "Budget":
        """What is left after `spent`, never below 0."""
        return Budget(max(0.0, self.epsilon - spent.epsilon), max(0.0, self.delta - spent.delta))


@dataclass(frozen=True)
class Balance:
    budget: Budget
    spent: Cost  # tight composition
    spent_basic: Cost  # basic composition of the same entries
    remaining: Budget  # the tenant's, after everything reserved or committed
    reserved_entries: int
    committed_entries: int


def _entry(row) -> Entry:
    id_, tenant, dataset, request_id, spent_by, state, cost, created, updated = row
    return Entry(id_, tenant, dataset, request_id, spent_by, state, Cost.from_dict(json.loads(cost)), created, updated)


def _check_cost(cost: Cost, field: str = "cost") -> None:
    """The cost and each of its parts (what composition counts): a finite ε of at least 0, δ in [0, 1)."""
    if not (math.isfinite(cost.epsilon) and cost.epsilon >= 0):
        raise InvalidInput(f"{field}.epsilon",
                           "must be a finite number of at least 0 (an unbounded ε cannot be charged)")
    if not (math.isfinite(cost.delta) and 0 <= cost.delta < 1):
        raise InvalidInput(f"{field}.delta", "must be in [0, 1)")
    for i, part in enumerate(cost.components):
        _check_cost(part, f"{field}.components[{i}]")


class _Cold(Exception):
    """Leaves a write transaction (rolled back) because these compositions are not cached yet."""

    def __init__(self, compositions: list[list[Cost]]):
        super().__init__(f"{len(compositions)} compositions to compute outside the transaction")
        self.compositions = compositions


def _ready(*compositions: list[Cost], last: bool) -> None:
    """Inside a write transaction, before composing: raises _Cold unless each composition is cached (or `last`)."""
    cold = [costs for costs in compositions if not composition.cached(costs)]
    if cold and not last:
        raise _Cold(cold)


class PrivacyLedger:
    def __init__(self, transaction: Callable[[], AbstractContextManager]):
        """`transaction()` opens a transaction on the coordinator's database and yields its connection."""
        self._transaction = transaction

    # -- reading ----------------------------------------------------------------------------------------------

    @staticmethod
    def _budget(db, tenant: str, *, active: bool = True) -> Budget:
        query = "SELECT budget_epsilon, budget_delta FROM tenants WHERE id = ?"
        row = db.execute(query + " AND state = 'ACTIVE'" if active else query, (tenant,)).fetchone()
        if row is None:
            raise NotFound("tenant", f"tenants/{tenant}")
        return Budget(*row)

    @staticmethod
    def _active(db, tenant: str, dataset: str = "") -> list[Entry]:
        query = f"SELECT {_COLUMNS} FROM ledger_entries WHERE tenant = ? AND state IN (?, ?)"
        args: tuple = (tenant, RESERVED, COMMITTED)
        if dataset:
            query, args = query + " AND dataset = ?", (*args, dataset)
        return [_entry(r) for r in db.execute(query + " ORDER BY id", args).fetchall()]

    def balance(self, tenant: str, dataset: str = "") -> Balance:
        """The tenant's budget and what is left of it; `spent` for one dataset's entries when `dataset` is given."""
        with self._transaction() as db:
            budget = self._budget(db, tenant)
            everything = self._active(db, tenant)
        shown = [e for e in everything if not dataset or e.dataset == dataset]
        costs = [e.cost for e in shown]
        scope = f"datasets/{dataset}" if dataset else f"tenants/{tenant}"
        spent = composition.tight(costs, scope)
        total = composition.tight([e.cost for e in everything]) if dataset else spent  # composed once when the same
        return Balance(budget, spent, composition.basic(costs, scope), budget.less(total),
                       sum(e.state == RESERVED for e in shown), sum(e.state == COMMITTED for e in shown))

    def entries(self, tenant: str, *, dataset: str = "", before: str = "", limit: int = 50) -> list[Entry]:
        """Newest first; `before` an entry id from the previous page."""
        query = f"SELECT {_COLUMNS} FROM ledger_entries WHERE tenant = ?"
        args: tuple = (tenant,)
        if dataset:
            query, args = query + " AND dataset = ?", (*args, dataset)
        if before:
            query, args = query + " AND id < ?", (*args, before)
        with self._transaction() as db:
            return [_entry(r) for r in db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()]

    # -- charging ---------------------------------------------------------------------------------------------

    def _writing(self, work: Callable[..., T]) -> T:
        """`work(db, ready)` in a write transaction. `work` calls `ready(costs, …)` before composing: when one of
        those compositions is not cached, the transaction is rolled back, they are composed here, outside it (other
        callers go on meanwhile), and `work` runs again from the start; the last attempt composes inside."""
        for attempt in range(_ATTEMPTS):
            try:
                with self._transaction() as db:
                    return work(db, partial(_ready, last=attempt == _ATTEMPTS - 1))
            except _Cold as cold:
                for costs in cold.compositions:
                    composition.tight(costs)
        raise AssertionError("the last attempt composes inside the transaction")  # pragma: no cover

    @staticmethod
    def _lock_tenant(db, tenant: str) -> None:
        # PostgreSQL takes a row lock; SQLite's BEGIN IMMEDIATE already holds the database. So one tenant's charges
        # are checked one after another.
        db.execute("UPDATE tenants SET budget_epsilon = budget_epsilon WHERE id = ?", (tenant,))

    def reserve(self, tenant: str, dataset: str, cost: Cost, *, request_id: str, spent_by: str,
                limit: Budget | None = None) -> tuple[Entry, Budget]:
        """Reserves `cost` against the tenant's budget (and `limit`, when given) and returns the entry and what is
        left; refuses with BudgetExhausted, recording nothing, when the composed spending would pass either."""
        _check_cost(cost)
        if not request_id:
            raise InvalidInput("request_id", "is required: it names the charge, so a retry is not charged twice")
        try:
            return self._writing(partial(self._reserve, tenant=tenant, dataset=dataset, cost=cost,
                                         request_id=request_id, spent_by=spent_by, limit=limit))
        except BudgetExhausted:
            metrics.privacy_refused(tenant)
            raise

    def _reserve(self, db, ready, *, tenant: str, dataset: str, cost: Cost, request_id: str, spent_by: str,
                 limit: Budget | None) -> tuple[Entry, Budget]:
        self._lock_tenant(db, tenant)
        budget = self._budget(db, tenant)
        found = db.execute(f"SELECT {_COLUMNS} FROM ledger_entries WHERE tenant = ? AND request_id = ?",
                           (tenant, request_id)).fetchone()
        existing = _entry(found) if found else None
        active = [e.cost for e in self._active(db, tenant)]
        if existing is not None and existing.state != RELEASED:
            if existing.dataset != dataset:
                raise Conflict(f"request_id {request_id!r} already names another charge "
                               f"(ε={existing.cost.epsilon:.6g} on datasets/{existing.dataset})",
                               metadata={"request_id": request_id})
            ready(active)
            return existing, budget.less(composition.tight(active))
        ready(active, active + [cost])
        before = composition.tight(active)
        after = composition.tight(active + [cost])
        for name, allowed in (("tenant budget", budget), ("request budget", limit)):
            if allowed is not None and (after.epsilon > allowed.epsilon or after.delta > allowed.delta):
                left = allowed.less(before)
                raise BudgetExhausted(
                    f"the {name} (ε={allowed.epsilon:g}, δ={allowed.delta:g}) has ε={left.epsilon:.6g}, "
                    f"δ={left.delta:.3g} left; this charge ({cost.description or cost.mechanism}) would bring "
                    f"the composed spending to ε={after.epsilon:.6g}, δ={after.delta:.3g}",
                    metadata={"dataset": dataset, "budget_epsilon": repr(allowed.epsilon),
                              "budget_delta": repr(allowed.delta), "spent_epsilon": repr(before.epsilon),
                              "spent_delta": repr(before.delta), "remaining_epsilon": repr(left.epsilon),
                              "remaining_delta": repr(left.delta), "requested_epsilon": repr(cost.epsilon),
                              "requested_delta": repr(cost.delta)})
        now = time.time()
        row = (f"{int(now * 1000):012x}{secrets.token_hex(10)}", tenant, dataset, request_id, spent_by, RESERVED,
               json.dumps(cost.to_dict()), now, now)
        if existing is not None:  # released before (the work failed), now retried: reserved again
            row = (existing.id, *row[1:7], existing.create_time, now)
            db.execute("UPDATE ledger_entries SET spent_by = ?, state = ?, epsilon = ?, delta = ?, cost = ?, "
                       "update_time = ? WHERE id = ?",
                       (spent_by, RESERVED, cost.epsilon, cost.delta, row[6], now, existing.id))
        else:
            db.execute("INSERT INTO ledger_entries (id, tenant, dataset, request_id, spent_by, state, epsilon, "
                       "delta, cost, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (*row[:6], cost.epsilon, cost.delta, *row[6:]))
        return _entry(row), budget.less(after)

    def _check_final(self, db, ready, entry: Entry, cost: Cost) -> None:
        """Refuses (InvalidInput, field `cost`) a final cost that would count for more than `entry`'s: declared, or
        composed with the tenant's other entries (ε or δ), or composed alone past the tenant's budget."""
        held = entry.cost
        if cost.epsilon > held.epsilon or cost.delta > held.delta:
            raise InvalidInput("cost", f"ε={cost.epsilon:.6g}, δ={cost.delta:.3g} exceeds the reserved "
                                       f"ε={held.epsilon:.6g}, δ={held.delta:.3g}")
        self._lock_tenant(db, entry.tenant)
        budget = self._budget(db, entry.tenant, active=False)  # a deleted tenant's work still settles its charge
        others = [e.cost for e in self._active(db, entry.tenant) if e.id != entry.id]
        ready([cost], others + [held], others + [cost])
        reserved, final = composition.tight(others + [held]), composition.tight(others + [cost])
        if final.epsilon > reserved.epsilon or final.delta > reserved.delta:
            raise InvalidInput("cost", f"its parts (mechanisms and parameters) count for more than the reserved "
                                       f"charge's: the tenant's composed spending would be ε={final.epsilon!r}, "
                                       f"δ={final.delta!r} with it, ε={reserved.epsilon!r}, δ={reserved.delta!r} "
                                       f"with the reservation")
        alone = composition.tight([cost])
        if alone.epsilon > budget.epsilon or alone.delta > budget.delta:
            raise InvalidInput("cost", f"its parts compose to ε={alone.epsilon!r}, δ={alone.delta!r}, more than "
                                       f"the tenant budget (ε={budget.epsilon:g}, δ={budget.delta:g})")

    def _move(self, db, ready, *, tenant: str, request_id: str, state: str, cost: Cost | None = None,
              moved: list[Entry] | None = None) -> Entry:
        """Moves a reserved entry to `state` (with `cost`, never counting for more than the reserved one); `moved`
        holds the entry when this attempt moved it (not a retry's)."""
        if moved is not None:
            moved.clear()
        found = db.execute(f"SELECT {_COLUMNS} FROM ledger_entries WHERE tenant = ? AND request_id = ?",
                           (tenant, request_id)).fetchone()
        if found is None:
            raise NotFound("ledger entry", f"request_id {request_id}")
        entry = _entry(found)
        if cost is not None and (entry.state == RESERVED or (entry.state == COMMITTED and cost != entry.cost)):
            self._check_final(db, ready, entry, cost)
        if entry.state == state:
            return entry  # a retry
        if entry.state != RESERVED:
            raise FailedPrecondition(f"the charge {request_id!r} is {entry.state.lower()}; it cannot be "
                                     f"{state.lower()}", reason="LEDGER_ENTRY_" + entry.state)
        cost = cost or entry.cost
        now = time.time()
        db.execute("UPDATE ledger_entries SET state = ?, epsilon = ?, delta = ?, cost = ?, update_time = ? "
                   "WHERE id = ?", (state, cost.epsilon, cost.delta, json.dumps(cost.to_dict()), now, entry.id))
        entry = Entry(entry.id, tenant, entry.dataset, request_id, entry.spent_by, state, cost, entry.create_time, now)
        if moved is not None:
            moved.append(entry)
        return entry

    def commit(self, tenant: str, request_id: str, cost: Cost | None = None) -> Entry:
        """The work is done. `cost`, when the final cost is known only now, may not count for more than the reserved
        one (see the module's docstring); committing again with the same cost returns the committed entry."""
        if cost is not None:
            _check_cost(cost)
        moved: list[Entry] = []
        entry = self._writing(partial(self._move, tenant=tenant, request_id=request_id, state=COMMITTED, cost=cost,
                                      moved=moved))
        if moved:  # committed now, not a retry: counted once (umbra_privacy_epsilon_charged_total)
            metrics.privacy_charged(tenant, entry.cost.epsilon)
        return entry

    def release(self, tenant: str, request_id: str) -> Entry:
        """The work failed before it released anything: the reservation stops counting."""
        return self._writing(partial(self._move, tenant=tenant, request_id=request_id, state=RELEASED))
