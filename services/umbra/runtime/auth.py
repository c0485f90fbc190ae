"""Who is calling. The public coordinator takes tenant API keys (kept only as SHA-256 hashes, in its database:
umbra.services.coordinator.api_keys) and the admin key; internal services take the service credential that the
coordinator presents. Health checks and server reflection need no credential, so Kubernetes probes and
`buf curl --list-methods` work without one.

Credentials travel as `authorization: Bearer <secret>`. An internal call names the tenant it acts for in
`x-umbra-tenant`; only a caller holding the service credential may set it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from umbra.runtime.errors import InvalidInput, PermissionDenied, Unauthenticated

AUTHORIZATION = "authorization"
TENANT_HEADER = "x-umbra-tenant"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                   "/grpc.reflection.v1.ServerReflection/")
TENANT_ID = re.compile(r"[a-z][a-z0-9-]{1,38}[a-z0-9]")  # matched whole (fullmatch), ASCII only
_KEY = re.compile(r"umbra_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


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
    if not isinstance(value, str) or not TENANT_ID.fullmatch(value):
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


class KeyChecker(Protocol):
    """What the public coordinator checks credentials against (umbra.services.coordinator.api_keys)."""

    def verify(self, key: str) -> str | None:
        """The active tenant owning a valid, unrevoked key, or None."""

    def tenant_active(self, tenant: str) -> bool: ...


class TenantAuthenticator:
    """The public coordinator: tenant API keys, or the admin key. On its `internal_methods` only (full method
    paths: the ledger's reserve, commit and release), also the service credential of Umbra's own workers, which
    must name their tenant in x-umbra-tenant. Every call made for a tenant, by key or by a worker, is refused
    once that tenant is deleted: the check asks the tenant's state each time."""

    def __init__(self, keys: KeyChecker, admin_key: str, service_token: str = "",
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
            if not self._keys.tenant_active(principal.tenant):
                raise Unauthenticated(f"tenant {principal.tenant!r} does not exist or was deleted",
                                      reason="TENANT_INACTIVE")
            return principal
        tenant = self._keys.verify(token)
        if tenant is None:
            raise Unauthenticated("invalid or revoked API key (or its tenant was deleted)",
                                  reason="CREDENTIAL_INVALID")
        return Principal("tenant", tenant)


@contextlib.contextmanager
def bound(principal: Principal) -> Iterator[None]:
    """Makes `principal` the caller for the duration of a block (the interceptor and the operation runner)."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)
