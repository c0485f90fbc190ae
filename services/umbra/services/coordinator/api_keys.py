"""Tenant API keys, in the coordinator's database beside the tenants they belong to.

A key is `umbra_<id>_<secret>`; only the secret's SHA-256 is stored, so a copy of the database gives no usable
key (keys are 256-bit random, so a fast hash is the right one). Keys and tenants share one database so that

- every check of a key also checks that its tenant is still active (one query), and
- issuing a key and deleting its tenant are each one transaction: a key is issued only to an active tenant, and
  deleting a tenant revokes, in the same transaction, every key issued before it.
"""

from __future__ import annotations

import hmac
import re
import secrets
import sqlite3
import time
from pathlib import Path

from umbra.runtime.auth import sha256_hex, validate_tenant_id
from umbra.runtime.errors import NotFound
from umbra.services.coordinator.db import CoordinatorDB

_KEY = re.compile(r"umbra_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")  # matched whole, ASCII only

KeyRow = tuple[str, str, float, float | None]  # key_id, display_name, create_time, revoke_time


class ApiKeyStore:
    def __init__(self, db: CoordinatorDB):
        self._db = db  # its schema holds the api_keys table

    def import_legacy(self, path: Path) -> int:
        """Moves the keys of a data folder from before keys lived here (`api_keys.sqlite3`) into this database,
        then renames that file away. Returns the number of keys moved."""
        if not path.exists():
            return 0
        legacy = sqlite3.connect(path)
        try:
            rows = legacy.execute("SELECT key_id, tenant, secret_sha256, display_name, create_time, revoke_time "
                                  "FROM api_keys").fetchall()
        finally:
            legacy.close()
        with self._db.transaction() as sql:
            sql.executemany("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
        path.rename(path.with_name(path.name + ".imported"))
        return len(rows)

    def issue(self, tenant: str, display_name: str = "") -> tuple[str, str]:
        """Makes a key for an active tenant, in one transaction with the check. Returns (key_id, plaintext key);
        the plaintext is not kept. NotFound when the tenant does not exist or was deleted."""
        validate_tenant_id(tenant)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self._db.transaction() as sql:
            state = sql.execute("SELECT state FROM tenants WHERE id = ?", (tenant,)).fetchone()
            if state is None or state[0] != "ACTIVE":
                raise NotFound("tenant", f"tenants/{tenant}")
            sql.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                        (key_id, tenant, sha256_hex(secret), display_name, time.time()))
        return key_id, f"umbra_{key_id}_{secret}"

    def revoke(self, tenant: str, key_id: str) -> None:
        """Revokes one of the tenant's keys; revoking it again is a no-op (safe to retry)."""
        with self._db.transaction() as sql:
            sql.execute("UPDATE api_keys SET revoke_time = ? WHERE key_id = ? AND tenant = ? AND revoke_time IS NULL",
                        (time.time(), key_id, tenant))
            exists = sql.execute("SELECT 1 FROM api_keys WHERE key_id = ? AND tenant = ?", (key_id, tenant)).fetchone()
        if exists is None:
            raise NotFound("api key", key_id)

    def delete_tenant(self, tenant: str) -> None:
        """Marks the tenant deleted and revokes all its keys, in one transaction."""
        now = time.time()
        with self._db.transaction() as sql:
            sql.execute("UPDATE tenants SET state = 'DELETED' WHERE id = ?", (tenant,))
            sql.execute("UPDATE api_keys SET revoke_time = ? WHERE tenant = ? AND revoke_time IS NULL", (now, tenant))

    def list(self, tenant: str, *, after: str = "", limit: int = 1000) -> list[KeyRow]:
        """(key_id, display_name, create_time, revoke_time) of a tenant's keys, in key_id order."""
        return self._db.fetch_all("SELECT key_id, display_name, create_time, revoke_time FROM api_keys "
                             "WHERE tenant = ? AND key_id > ? ORDER BY key_id LIMIT ?", (tenant, after, limit))

    def key(self, tenant: str, key_id: str) -> KeyRow | None:
        return self._db.fetch_one("SELECT key_id, display_name, create_time, revoke_time FROM api_keys "
                             "WHERE tenant = ? AND key_id = ?", (tenant, key_id))

    def verify(self, key: str) -> str | None:
        """The tenant owning a valid, unrevoked key, if that tenant is active; otherwise None."""
        match = _KEY.fullmatch(key)
        if not match:
            return None
        key_id, secret = match.groups()
        row = self._db.fetch_one("SELECT k.tenant, k.secret_sha256 FROM api_keys k JOIN tenants t ON t.id = k.tenant "
                            "WHERE k.key_id = ? AND k.revoke_time IS NULL AND t.state = 'ACTIVE'", (key_id,))
        if row is None or not hmac.compare_digest(row[1], sha256_hex(secret)):
            return None
        return row[0]

    def tenant_active(self, tenant: str) -> bool:
        row = self._db.fetch_one("SELECT state FROM tenants WHERE id = ?", (tenant,))
        return row is not None and row[0] == "ACTIVE"
