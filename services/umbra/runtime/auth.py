"""Who is calling. The public coordinator takes tenant API keys (kept only as SHA-256 hashes) and the admin
key; internal services take the service credential that the coordinator presents. Health checks and server
reflection need no credential, so Kubernetes probes and `buf curl --list-methods` work without one.

Credentials travel as `authorization: Bearer <secret>`. An internal call names the tenant it acts for in
`x-umbra-tenant`; only a caller holding the service credential may set it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from umbra.runtime.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated

AUTHORIZATION = "authorization"
TENANT_HEADER = "x-umbra-tenant"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                   "/grpc.reflection.v1.ServerReflection/")
TENANT_ID = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
_KEY = re.compile(r"^umbra_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Principal:
    kind: str  # "tenant", "admin", "service" or "anonymous" (exempt methods only)
    tenant: str = ""


ANONYMOUS = Principal("anonymous")
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)


def current() -> Principal:
    """The caller of the RPC being served (set by the interceptor)."""
    return _current.get()


def require_tenant(why: str) -> str:
    """The calling tenant; PERMISSION_DENIED for callers who are not a tenant (admin, anonymous)."""
    principal = current()
    if principal.kind != "tenant" and not (principal.kind == "service" and principal.tenant):
        raise PermissionDenied(why)
    return principal.tenant


def validate_tenant_id(value: str, field: str = "tenant") -> str:
    if not TENANT_ID.match(value):
        raise InvalidInput(field, "must be 3-40 characters of lower-case letters, digits and '-', starting "
                                  "with a letter and not ending with '-'")
    return value


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer(metadata: Mapping[str, str]) -> str:
    value = metadata.get(AUTHORIZATION, "")
    scheme, _, token = value.partition(" ")
    if not value:
        raise Unauthenticated("missing credential: send 'authorization: Bearer <key>'", reason="CREDENTIAL_MISSING")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed credential: expected 'authorization: Bearer <key>'",
                              reason="CREDENTIAL_MALFORMED")
    return token.strip()


class Authenticator(Protocol):
    def authenticate(self, metadata: Mapping[str, str], method: str = "") -> Principal: ...


class ServiceAuthenticator:
    """Internal services: only the service credential is accepted."""

    def __init__(self, service_token: str):
        self._hash = sha256_hex(service_token)

    def accepts(self, token: str) -> bool:
        return hmac.compare_digest(sha256_hex(token), self._hash)

    def authenticate(self, metadata: Mapping[str, str], method: str = "") -> Principal:
        token = bearer(metadata)
        if not self.accepts(token):
            raise Unauthenticated("invalid service credential", reason="CREDENTIAL_INVALID")
        tenant = metadata.get(TENANT_HEADER, "")
        if tenant:
            try:
                validate_tenant_id(tenant, TENANT_HEADER)
            except InvalidInput as exc:
                raise Unauthenticated(exc.message, reason="CREDENTIAL_MALFORMED") from None
        return Principal("service", tenant)


class ApiKeyStore:
    """Tenant API keys. A key is `umbra_<id>_<secret>`; only the secret's SHA-256 is stored, so a copy of
    the database gives no usable key. Keys are 256-bit random, so a fast hash is the right one here."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
                "secret_sha256 TEXT NOT NULL, display_name TEXT NOT NULL, create_time REAL NOT NULL, "
                "revoke_time REAL)"
            )

    def issue(self, tenant: str, display_name: str = "") -> tuple[str, str]:
        """Makes a key for a tenant. Returns (key_id, plaintext key); the plaintext is not kept."""
        validate_tenant_id(tenant)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                             (key_id, tenant, sha256_hex(secret), display_name, time.time()))
        return key_id, f"umbra_{key_id}_{secret}"

    def revoke(self, tenant: str, key_id: str) -> None:
        """Revokes one of the tenant's keys; revoking it again is a no-op (safe to retry)."""
        with self._lock:
            self._db.execute("UPDATE api_keys SET revoke_time = ? WHERE key_id = ? AND tenant = ? "
                             "AND revoke_time IS NULL", (time.time(), key_id, tenant))
            exists = self._db.execute("SELECT 1 FROM api_keys WHERE key_id = ? AND tenant = ?",
                                      (key_id, tenant)).fetchone()
        if exists is None:
            raise NotFound("api key", key_id)

    def list(self, tenant: str, *, after: str = "", limit: int = 1000) -> list[tuple[str, str, float, float | None]]:
        """(key_id, display_name, create_time, revoke_time) of a tenant's keys, in key_id order."""
        with self._lock:
            return self._db.execute("SELECT key_id, display_name, create_time, revoke_time FROM api_keys "
                                    "WHERE tenant = ? AND key_id > ? ORDER BY key_id LIMIT ?",
                                    (tenant, after, limit)).fetchall()

    def key(self, tenant: str, key_id: str) -> tuple[str, str, float, float | None] | None:
        with self._lock:
            return self._db.execute("SELECT key_id, display_name, create_time, revoke_time FROM api_keys "
                                    "WHERE tenant = ? AND key_id = ?", (tenant, key_id)).fetchone()

    def revoke_all(self, tenant: str) -> None:
        with self._lock:
            self._db.execute("UPDATE api_keys SET revoke_time = ? WHERE tenant = ? AND revoke_time IS NULL",
                             (time.time(), tenant))

    def verify(self, key: str) -> str | None:
        """The tenant owning a valid, unrevoked key, or None."""
        match = _KEY.match(key)
        if not match:
            return None
        key_id, secret = match.groups()
        with self._lock:
            row = self._db.execute("SELECT tenant, secret_sha256 FROM api_keys WHERE key_id = ? "
                                   "AND revoke_time IS NULL", (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(row[1], sha256_hex(secret)):
            return None
        return row[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TenantAuthenticator:
    """The public coordinator: tenant API keys, or the admin key. On its `internal_methods` only (full method
    paths: the ledger's reserve, commit and release), also the service credential of Umbra's own workers, which
    must name their tenant in x-umbra-tenant."""

    def __init__(self, keys: ApiKeyStore, admin_key: str, service_token: str = "",
                 internal_methods: frozenset[str] = frozenset()):
        self._keys = keys
        self._admin_hash = sha256_hex(admin_key)
        self._service = ServiceAuthenticator(service_token) if service_token else None
        self._internal = internal_methods

    def authenticate(self, metadata: Mapping[str, str], method: str = "") -> Principal:
        token = bearer(metadata)
        if hmac.compare_digest(sha256_hex(token), self._admin_hash):
            return Principal("admin")
        if self._service is not None and method in self._internal and self._service.accepts(token):
            principal = self._service.authenticate(metadata)
            if not principal.tenant:
                raise Unauthenticated(f"an internal call names its tenant in {TENANT_HEADER}",
                                      reason="CREDENTIAL_MALFORMED")
            return principal
        tenant = self._keys.verify(token)
        if tenant is None:
            raise Unauthenticated("invalid or revoked API key", reason="CREDENTIAL_INVALID")
        return Principal("tenant", tenant)


@contextlib.contextmanager
def bound(principal: Principal) -> Iterator[None]:
    """Makes `principal` the caller for the duration of a block (the interceptor and the operation runner)."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)
