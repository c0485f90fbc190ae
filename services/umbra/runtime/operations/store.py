"""The persisted record of every operation: one SQLite row per operation, holding the whole
`google.longrunning.Operation` plus the columns we look it up by. Writes are single statements, so a crash
leaves either the old record or the new one."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from google.longrunning import operations_proto_pb2 as lro

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    done INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    create_time REAL NOT NULL,
    operation BLOB NOT NULL,
    request BLOB,
    resumable INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS operations_request ON operations (tenant, kind, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_listing ON operations (tenant, name);
"""


@dataclass(frozen=True)
class Record:
    operation: lro.Operation
    tenant: str
    kind: str
    cancel_requested: bool
    request: bytes = b""  # the request that started it, kept for resumable operations
    resumable: bool = False


class OperationStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(operations)")}
            for column, kind in (("request", "BLOB"), ("resumable", "INTEGER NOT NULL DEFAULT 0")):
                if column not in columns:  # a data folder from before resumable operations
                    self._db.execute(f"ALTER TABLE operations ADD COLUMN {column} {kind}")

    def insert(self, op: lro.Operation, *, tenant: str, kind: str, request_id: str = "", request: bytes = b"",
               resumable: bool = False) -> Record:
        """Stores a new operation, or returns the existing one for the same (tenant, kind, request_id)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO operations (name, tenant, kind, request_id, done, create_time, operation, request, "
                    "resumable) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (op.name, tenant, kind, request_id or None, int(op.done), time.time(), op.SerializeToString(),
                     request, int(resumable)),
                )
                return Record(op, tenant, kind, False, request, resumable)
            except sqlite3.IntegrityError:
                row = self._db.execute(
                    "SELECT operation, tenant, kind, cancel_requested FROM operations "
                    "WHERE tenant = ? AND kind = ? AND request_id = ?", (tenant, kind, request_id)).fetchone()
                if row is None:
                    raise
                return _record(row)

    def find(self, tenant: str, kind: str, request_id: str) -> Record | None:
        """The operation a (tenant, kind, request_id) started, if any."""
        with self._lock:
            row = self._db.execute("SELECT operation, tenant, kind, cancel_requested FROM operations "
                                   "WHERE tenant = ? AND kind = ? AND request_id = ?",
                                   (tenant, kind, request_id)).fetchone()
        return None if row is None else _record(row)

    def save(self, op: lro.Operation) -> None:
        with self._lock:
            self._db.execute("UPDATE operations SET operation = ?, done = ? WHERE name = ?",
                             (op.SerializeToString(), int(op.done), op.name))

    def get(self, name: str) -> Record | None:
        with self._lock:
            row = self._db.execute("SELECT operation, tenant, kind, cancel_requested FROM operations "
                                   "WHERE name = ?", (name,)).fetchone()
        return None if row is None else _record(row)

    def forget_request_id(self, name: str) -> None:
        """Unbinds an operation from its request_id, so that the same request_id can start a new one."""
        with self._lock:
            self._db.execute("UPDATE operations SET request_id = NULL WHERE name = ?", (name,))

    def request_cancel(self, name: str) -> None:
        with self._lock:
            self._db.execute("UPDATE operations SET cancel_requested = 1 WHERE name = ?", (name,))

    def delete(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM operations WHERE name = ?", (name,))

    def list(self, tenant: str, *, after: str | None, limit: int, done: bool | None) -> list[Record]:
        """Operations of one tenant in name order, starting after `after`."""
        query = "SELECT operation, tenant, kind, cancel_requested FROM operations WHERE tenant = ? AND name > ?"
        args: list = [tenant, after or ""]
        if done is not None:
            query += " AND done = ?"
            args.append(int(done))
        query += " ORDER BY name LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_record(r) for r in rows]

    def unfinished(self) -> list[Record]:
        with self._lock:
            rows = self._db.execute("SELECT operation, tenant, kind, cancel_requested, request, resumable "
                                    "FROM operations WHERE done = 0").fetchall()
        return [_record(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row) -> Record:
    op = lro.Operation()
    op.ParseFromString(row[0])
    extra = (bytes(row[4] or b""), bool(row[5])) if len(row) > 4 else ()
    return Record(op, row[1], row[2], bool(row[3]), *extra)
