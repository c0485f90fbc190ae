"""A fair share of a service's running slots among its tenants (issue 26: one tenant's long work starved others).

    pool = FairPool(4)
    pool.submit("acme", "operations/0001", work)      # runs `work()` on its own thread once acme gets a slot
    pool.discard("operations/0001")                   # True: it was still queued, and now never runs

Each tenant has a FIFO queue. Whenever a slot is free, it goes to the tenant with queued work that holds the
fewest slots now; among equals, to the one served longest ago (round-robin). So a tenant alone may use every
slot, but once others wait, each slot that frees goes to them until every waiting tenant holds its fair share.
Nothing is preempted: a slot frees when its work ends, or while the work waits for something outside it
(`lent`). Every started task gets its own thread (a thread per running task, plus one per task inside `lent`).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Ticket:
    """A request for a slot: a task to start on a new thread, or (task None) a lent slot wanted back."""

    tenant: str
    key: str = ""
    task: Callable[[], None] | None = None
    granted: bool = False


class FairPool:
    def __init__(self, slots: int, *, name: str = "operation"):
        if slots < 1:
            raise ValueError(f"a pool needs at least one slot, not {slots}")
        self.slots = slots
        self._name = name
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Ticket]] = {}  # only tenants with queued tickets
        self._held: dict[str, int] = {}  # slots held per tenant (only tenants holding some)
        self._busy = 0  # slots held in all (above `slots` only for work cutting in to end, see `lent`)
        self._served: dict[str, int] = {}  # when each tenant was last given a slot
        self._grants = itertools.count(1)
        self._threads = itertools.count(1)
        self._closed = False

    def submit(self, tenant: str, key: str, task: Callable[[], None]) -> bool:
        """Queues `task` to run on its own thread once `tenant` gets a slot; False (not queued) once closed."""
        with self._cond:
            if self._closed:
                return False
            self._queues.setdefault(tenant, deque()).append(_Ticket(tenant, key, task))
            self._dispatch()
            return True

    def discard(self, key: str) -> bool:
        """Takes the queued task `key` out of its queue: True if it was queued (it never runs), False if it has
        started already (or is unknown)."""
        with self._cond:
            for tenant, queue in self._queues.items():
                for ticket in queue:
                    if ticket.task is not None and ticket.key == key:
                        queue.remove(ticket)
                        if not queue:
                            del self._queues[tenant]
                        return True
            return False

    @contextmanager
    def lent(self, tenant: str, *, cut_in: Callable[[], bool]) -> Iterator[None]:
        """Gives one of `tenant`'s slots back for the block (queued work may start on it) and takes one again on
        the way out, queued first among the tenant's own work but behind other tenants as fairness says. When
        `cut_in()` is true (checked on the way out and whenever the pool wakes) the slot is taken at once, even
        past the pool's size: for work that only has to end."""
        with self._cond:
            self._release(tenant)
            self._dispatch()
        try:
            yield
        finally:
            self._take_back(tenant, cut_in)

    def wake(self) -> None:
        """Lets work waiting to take a lent slot back look at its `cut_in` again (after a cancellation)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> list[str]:
        """Starts nothing more: returns the keys of the queued tasks, dropped (they never run). Lent slots wanted
        back are given at once, so that the work holding them can end."""
        with self._cond:
            self._closed = True
            dropped = []
            for queue in self._queues.values():
                for ticket in queue:
                    if ticket.task is None:
                        self._grant(ticket)
                    else:
                        dropped.append(ticket.key)
            self._queues.clear()
            self._cond.notify_all()
            return dropped

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(slots held, tickets queued) per tenant, as they stand."""
        with self._cond:
            return dict(self._held), {t: len(q) for t, q in self._queues.items()}

    # -- under the lock ----------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._closed and self._queues and self._busy < self.slots:
            tenant = min(self._queues, key=lambda t: (self._held.get(t, 0), self._served.get(t, 0)))
            queue = self._queues[tenant]
            ticket = queue.popleft()
            if not queue:
                del self._queues[tenant]
            if ticket.task is None:
                self._grant(ticket)
                continue
            self._take(tenant)
            thread = threading.Thread(target=self._work, args=(ticket,), name=f"{self._name}-{next(self._threads)}",
                                      daemon=True)  # a stuck task must not hold the process open after shutdown
            try:
                thread.start()
            except RuntimeError:  # no thread to be had now: the task keeps its place, tried again at the next change
                log.exception("could not start a thread for %s; it stays queued", ticket.key)
                self._release(tenant)
                self._queues.setdefault(tenant, deque()).appendleft(ticket)
                return

    def _grant(self, ticket: _Ticket) -> None:
        self._take(ticket.tenant)
        ticket.granted = True
        self._cond.notify_all()

    def _take(self, tenant: str) -> None:
        self._held[tenant] = self._held.get(tenant, 0) + 1
        self._busy += 1
        self._served[tenant] = next(self._grants)

    def _release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        self._busy -= 1
        if not self._held[tenant]:
            del self._held[tenant]
            if tenant not in self._queues:
                self._served.pop(tenant, None)  # an idle tenant is forgotten: it comes back as the least served

    # -- on the task's own thread ------------------------------------------------------------------------------

    def _work(self, ticket: _Ticket) -> None:
        try:
            ticket.task()
        finally:
            with self._cond:
                self._release(ticket.tenant)
                self._dispatch()

    def _take_back(self, tenant: str, cut_in: Callable[[], bool]) -> None:
        with self._cond:
            if self._closed or cut_in():
                self._take(tenant)
                return
            ticket = _Ticket(tenant)
            self._queues.setdefault(tenant, deque()).appendleft(ticket)  # work under way before the tenant's new
            self._dispatch()
            while not ticket.granted:
                self._cond.wait(1.0)  # woken by every grant, by wake() and by close()
                if not ticket.granted and cut_in():
                    queue = self._queues[tenant]
                    queue.remove(ticket)
                    if not queue:
                        del self._queues[tenant]
                    self._take(tenant)
                    return
