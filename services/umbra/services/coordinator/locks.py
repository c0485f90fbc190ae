"""One reader-writer lock per dataset, so that no write into a dataset's objects races with a change of its state.

Every write that lands in a dataset's prefix (an upload stream's shard, a commit's copy of a staged shard, the
commit's manifest) holds the dataset's lock *shared* and checks the version's state in the database first.
Whatever changes that state (the start of a commit, deleting the dataset, sweeping an abandoned upload) holds it
*exclusively*: it waits for the writes under way to land, and every later write finds the new state and is
refused. Writers wait behind a waiting exclusive holder, so a stream of uploads cannot starve a deletion.

    with locks.shared(tenant, dataset):
        if db.version(...).state == "UPLOADING":
            store.put(...)

On SQLite (one coordinator process) the locks are in-process. On PostgreSQL (any number of replicas) they are the
database's advisory locks, shared and exclusive, held by a pooled connection for as long as the block runs: every
replica sees them, a waiting exclusive request queues new shared ones behind it there too, and a replica that dies
holds nothing (the server drops a dead session's locks).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from umbra.runtime.sql import Database


class _ReadersWriter:
    def __init__(self):
        self.changed = threading.Condition()
        self.readers = 0
        self.writer = False
        self.writers_waiting = 0
        self.users = 0  # holders and waiters: the entry is dropped when none is left


def advisory_key(tenant: str, dataset: str) -> int:
    """A stable signed 64-bit key for (tenant, dataset): PostgreSQL's advisory lock space."""
    digest = hashlib.blake2b(f"dataset\0{tenant}\0{dataset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class DatasetLocks:
    def __init__(self, database: Database | None = None):
        """`database`: a PostgreSQL database makes the locks its advisory locks; otherwise they are in-process."""
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], _ReadersWriter] = {}
        self._database = database if database is not None and database.postgres else None

    @contextmanager
    def _advisory(self, tenant: str, dataset: str, mode: str) -> Iterator[None]:
        key = advisory_key(tenant, dataset)
        with self._database.session_connection() as connection:
            connection.execute(f"SELECT pg_advisory_lock{mode}(?)", (key,))
            try:
                yield
            finally:
                connection.execute(f"SELECT pg_advisory_unlock{mode}(?)", (key,))

    @contextmanager
    def only_one(self, task: str) -> Iterator[bool]:
        """Whether this replica may run `task` now (the sweep): True for the one replica that takes the task's
        advisory lock, without waiting, until the block ends; False for the others meanwhile. On SQLite (one
        process) always True."""
        if self._database is None:
            yield True
            return
        key = advisory_key("", f"task\0{task}")
        with self._database.session_connection() as connection:
            taken = bool(connection.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0])
            try:
                yield taken
            finally:
                if taken:
                    connection.execute("SELECT pg_advisory_unlock(?)", (key,))

    @contextmanager
    def _entry(self, tenant: str, dataset: str) -> Iterator[_ReadersWriter]:
        with self._guard:
            lock = self._locks.setdefault((tenant, dataset), _ReadersWriter())
            lock.users += 1
        try:
            yield lock
        finally:
            with self._guard:
                lock.users -= 1
                if lock.users == 0:
                    del self._locks[(tenant, dataset)]

    @contextmanager
    def shared(self, tenant: str, dataset: str) -> Iterator[None]:
        """Held while a write lands in the dataset's objects."""
        if self._database is not None:
            with self._advisory(tenant, dataset, "_shared"):
                yield
            return
        with self._entry(tenant, dataset) as lock:
            with lock.changed:
                lock.changed.wait_for(lambda: not lock.writer and not lock.writers_waiting)
                lock.readers += 1
            try:
                yield
            finally:
                with lock.changed:
                    lock.readers -= 1
                    lock.changed.notify_all()

    @contextmanager
    def exclusive(self, tenant: str, dataset: str) -> Iterator[None]:
        """Held while the state of the dataset or one of its versions changes."""
        if self._database is not None:
            with self._advisory(tenant, dataset, ""):
                yield
            return
        with self._entry(tenant, dataset) as lock:
            with lock.changed:
                lock.writers_waiting += 1
                lock.changed.wait_for(lambda: not lock.writer and lock.readers == 0)
                lock.writers_waiting -= 1
                lock.writer = True
            try:
                yield
            finally:
                with lock.changed:
                    lock.writer = False
                    lock.changed.notify_all()

    def __len__(self) -> int:
        """Datasets with a holder or waiter (0 when idle: entries do not pile up)."""
        with self._guard:
            return len(self._locks)
