"""The coordinator's metadata in SQL: tenants and their API keys (api_keys.py), datasets and dataset versions, the
privacy ledger's entries (umbra.privacy.ledger) and the protection jobs (job_records.py).

One database for every replica: a SQLite file by default (one coordinator process), PostgreSQL when replicated
(`UMBRA_DATABASE_URL`), both through umbra.runtime.sql. The schema is versioned (Alembic, migrations/versions/):
opening the database brings it to the newest revision this code knows, and refuses a newer one.

Metadata is written before any side effect in storage, and a version's state says how far it got, so a
restart can finish or clean up what a crash interrupted (see versions.recover).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from umbra.runtime.sql import Database, IntegrityError, Session

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class TenantRow:
    id: str
    display_name: str
    state: str  # ACTIVE | DELETED
    budget_epsilon: float
    budget_delta: float
    create_time: float


@dataclass(frozen=True)
class DatasetRow:
    tenant: str
    id: str
    display_name: str
    description: str
    create_time: float
    latest_version: int = 0


@dataclass(frozen=True)
class VersionRow:
    tenant: str
    dataset: str
    version: int
    state: str  # UPLOADING | COMMITTING | COMMITTED | FAILED
    origin: str
    shard_count: int
    create_time: float
    commit_time: float | None = None
    stats: dict = field(default_factory=dict)
    error: str = ""


class CoordinatorDB:
    def __init__(self, target: Path | str, *, single_process: bool = False):
        """`target`: a SQLAlchemy URL (`sqlite:///…`, `postgresql+psycopg://…`) or the path of a SQLite file.
        Migrates the schema; StartupError (umbra.runtime.sql) when the database cannot be used. `single_process`:
        the coordinator's own: a second process on the same SQLite file is refused."""
        url = target if isinstance(target, str) else f"sqlite:///{target}"
        self.sql = Database.open(url, single_process=single_process)
        try:
            self.revision = self.sql.migrate(MIGRATIONS)
        except BaseException:
            self.sql.close()
            raise
        self.postgres = self.sql.postgres

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sql.transaction() as session:
            yield session

    def fetch_one(self, query: str, args: tuple):
        return self.sql.fetch_one(query, args)

    def fetch_all(self, query: str, args: tuple):
        return self.sql.fetch_all(query, args)

    # -- tenants ----------------------------------------------------------------------------------------------

    def insert_tenant(self, row: TenantRow) -> bool:
        """False when the id is taken."""
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO tenants VALUES (?, ?, ?, ?, ?, ?)",
                           (row.id, row.display_name, row.state, row.budget_epsilon, row.budget_delta,
                            row.create_time))
            return True
        except IntegrityError:
            return False

    def tenant(self, tenant: str) -> TenantRow | None:
        row = self.fetch_one("SELECT * FROM tenants WHERE id = ?", (tenant,))
        return TenantRow(*row) if row else None

    def tenants(self, after: str, limit: int) -> list[TenantRow]:
        return [TenantRow(*r) for r in self.fetch_all("SELECT * FROM tenants WHERE id > ? ORDER BY id LIMIT ?",
                                                 (after, limit))]

    def tenant_ids(self) -> list[str]:
        """Every tenant's id, deleted ones too (their objects stay until an operator removes them)."""
        return [r[0] for r in self.fetch_all("SELECT id FROM tenants ORDER BY id", ())]

    def update_tenant(self, tenant: str, **fields) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE tenants SET {assignments} WHERE id = ?", (*fields.values(), tenant))

    # -- datasets ---------------------------------------------------------------------------------------------

    def insert_dataset(self, row: DatasetRow, request_id: str) -> DatasetRow | None:
        """The new row; the existing one when the same request_id made it; None when the id is taken."""
        with self.transaction() as db:
            existing = db.execute("SELECT request_id FROM datasets WHERE tenant = ? AND id = ?",
                                  (row.tenant, row.id)).fetchone()
            if existing is not None:
                return self.dataset(row.tenant, row.id) if request_id and existing[0] == request_id else None
            db.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?)",
                       (row.tenant, row.id, row.display_name, row.description, row.create_time, request_id or None))
        return row

    _DATASET = ("SELECT d.tenant, d.id, d.display_name, d.description, d.create_time, "
                "COALESCE((SELECT MAX(version) FROM dataset_versions v WHERE v.tenant = d.tenant "
                "AND v.dataset = d.id AND v.state = 'COMMITTED'), 0) FROM datasets d ")

    def dataset(self, tenant: str, dataset: str) -> DatasetRow | None:
        row = self.fetch_one(self._DATASET + "WHERE d.tenant = ? AND d.id = ?", (tenant, dataset))
        return DatasetRow(*row) if row else None

    def datasets(self, tenant: str, after: str, limit: int) -> list[DatasetRow]:
        return [DatasetRow(*r) for r in self.fetch_all(self._DATASET + "WHERE d.tenant = ? AND d.id > ? ORDER BY d.id "
                                                  "LIMIT ?", (tenant, after, limit))]

    def delete_dataset(self, tenant: str, dataset: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM dataset_versions WHERE tenant = ? AND dataset = ?", (tenant, dataset))
            db.execute("DELETE FROM datasets WHERE tenant = ? AND id = ?", (tenant, dataset))

    # -- versions ---------------------------------------------------------------------------------------------

    def new_version(self, tenant: str, dataset: str, shard_count: int, origin: str,
                    request_id: str) -> tuple[VersionRow, bool]:
        """Makes the next version in UPLOADING; (row, False) when request_id already made one."""
        with self.transaction() as db:
            if request_id:
                found = db.execute("SELECT version FROM dataset_versions WHERE tenant = ? AND dataset = ? "
                                   "AND request_id = ?", (tenant, dataset, request_id)).fetchone()
                if found:
                    return self.version(tenant, dataset, found[0]), False
            number = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_versions WHERE tenant = ? "
                                "AND dataset = ?", (tenant, dataset)).fetchone()[0]
            now = time.time()
            db.execute("INSERT INTO dataset_versions (tenant, dataset, version, state, origin, shard_count, "
                       "request_id, create_time) VALUES (?, ?, ?, 'UPLOADING', ?, ?, ?, ?)",
                       (tenant, dataset, number, origin, shard_count, request_id or None, now))
        return VersionRow(tenant, dataset, number, "UPLOADING", origin, shard_count, now), True

    _VERSION = ("SELECT tenant, dataset, version, state, origin, shard_count, create_time, commit_time, stats, "
                "error FROM dataset_versions ")

    @staticmethod
    def _version(row) -> VersionRow:
        *head, stats, error = row
        return VersionRow(*head, stats=json.loads(stats), error=error)

    def version(self, tenant: str, dataset: str, version: int) -> VersionRow | None:
        row = self.fetch_one(self._VERSION + "WHERE tenant = ? AND dataset = ? AND version = ?",
                             (tenant, dataset, version))
        return self._version(row) if row else None

    def versions(self, tenant: str, dataset: str, after: int, limit: int) -> list[VersionRow]:
        return [self._version(r) for r in self.fetch_all(
            self._VERSION + "WHERE tenant = ? AND dataset = ? AND version > ? ORDER BY version LIMIT ?",
            (tenant, dataset, after, limit))]

    def versions_in(self, states: tuple[str, ...]) -> list[VersionRow]:
        marks = ", ".join("?" for _ in states)
        return [self._version(r) for r in self.fetch_all(self._VERSION + f"WHERE state IN ({marks})", states)]

    def set_version_state(self, tenant: str, dataset: str, version: int, state: str, *, expect: tuple[str, ...],
                          stats: dict | None = None, error: str = "") -> bool:
        """Moves a version to `state` if it is in one of `expect`; False when it was not."""
        with self.transaction() as db:
            marks = ", ".join("?" for _ in expect)
            cur = db.execute(
                f"UPDATE dataset_versions SET state = ?, stats = COALESCE(?, stats), error = ?, "
                f"commit_time = CASE WHEN ? = 'COMMITTED' THEN ? ELSE commit_time END "
                f"WHERE tenant = ? AND dataset = ? AND version = ? AND state IN ({marks})",
                (state, json.dumps(stats) if stats is not None else None, error, state, time.time(), tenant, dataset,
                 version, *expect))
        return cur.rowcount == 1

    def delete_version(self, tenant: str, dataset: str, version: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM dataset_versions WHERE tenant = ? AND dataset = ? AND version = ?",
                       (tenant, dataset, version))

    def close(self) -> None:
        self.sql.close()
