"""TenantService: tenants (admin only) and the calling tenant's API keys."""

from __future__ import annotations

import logging
import math
import time

from umbra.coordinator.v1 import tenant_service_pb2 as ts
from umbra.coordinator.v1 import tenant_service_pb2_grpc
from umbra.inference import publications
from umbra.runtime import auth, names, pagination
from umbra.runtime.auth import validate_tenant_id
from umbra.runtime.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from umbra.services.coordinator import convert
from umbra.services.coordinator.api_keys import ApiKeyStore
from umbra.services.coordinator.db import CoordinatorDB, TenantRow
from umbra.storage import keys
from umbra.storage.base import ObjectStore

log = logging.getLogger(__name__)
DEFAULT_BUDGET = (10.0, 1e-5)  # epsilon, delta: what a tenant gets unless the admin says otherwise


def _admin() -> None:
    if auth.current().kind != "admin":
        raise PermissionDenied("only the admin credential may manage tenants")


def _tenant_caller() -> str:
    return auth.require_tenant("API keys belong to a tenant: call with that tenant's key")


def _budget(budget, field: str) -> tuple[float, float]:
    epsilon, delta = budget.epsilon, budget.delta
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise InvalidInput(f"{field}.epsilon", "must be a positive number")
    if not math.isfinite(delta) or not 0 <= delta < 1:
        raise InvalidInput(f"{field}.delta", "must be in [0, 1)")
    return epsilon, delta


def _display_name(value: str, field: str) -> str:
    if len(value) > 200 or any(ord(c) < 32 for c in value):
        raise InvalidInput(field, "must be at most 200 printable characters")
    return value


class TenantServicer(tenant_service_pb2_grpc.TenantServiceServicer):
    def __init__(self, db: CoordinatorDB, api_keys: ApiKeyStore, store: ObjectStore):
        self.db, self.keys, self.store = db, api_keys, store

    def CreateTenant(self, request, context):
        _admin()
        tenant = validate_tenant_id(request.tenant_id, "tenant_id")
        display = _display_name(request.tenant.display_name or tenant, "tenant.display_name")
        epsilon, delta = (_budget(request.tenant.privacy_budget, "tenant.privacy_budget")
                          if request.tenant.HasField("privacy_budget") else DEFAULT_BUDGET)
        if self.db.tenant(tenant) is not None:
            raise AlreadyExists(f"tenant {tenant!r} already exists (its first key was shown when it was created; "
                                "a tenant can make more with CreateApiKey)", metadata={"tenant": tenant})
        self.store.ensure_bucket(keys.bucket(tenant))  # idempotent; before the row, so a tenant always has one
        row = TenantRow(tenant, display, "ACTIVE", epsilon, delta, time.time())
        if not self.db.insert_tenant(row):
            raise AlreadyExists(f"tenant {tenant!r} already exists", metadata={"tenant": tenant})
        key_id, secret = self.keys.issue(tenant, "first key")
        log.info("tenant %s created", tenant)
        return ts.CreateTenantResponse(tenant=convert.tenant_to_proto(row), api_key_secret=secret,
                                       api_key=convert.api_key_to_proto(tenant, *self.keys.key(tenant, key_id)))

    def _visible_tenant(self, name: str) -> TenantRow:
        tenant = names.tenant(name)
        principal = auth.current()
        row = self.db.tenant(tenant)
        if row is None or row.state != "ACTIVE" or (principal.kind != "admin" and principal.tenant != tenant):
            raise NotFound("tenant", name)
        return row

    def GetTenant(self, request, context):
        return ts.GetTenantResponse(tenant=convert.tenant_to_proto(self._visible_tenant(request.name)))

    def ListTenants(self, request, context):
        _admin()
        rows, token = pagination.page(request, "tenants", lambda after, limit: self.db.tenants(after or "", limit),
                                      lambda row: row.id)
        return ts.ListTenantsResponse(tenants=[convert.tenant_to_proto(r) for r in rows], next_page_token=token)

    def UpdateTenant(self, request, context):
        _admin()
        row = self._visible_tenant(request.tenant.name)
        paths = set(request.update_mask.paths)
        unknown = paths - {"display_name", "privacy_budget"}
        if not paths or unknown:
            raise InvalidInput("update_mask", "must name 'display_name' and/or 'privacy_budget'")
        changes: dict = {}
        if "display_name" in paths:
            changes["display_name"] = _display_name(request.tenant.display_name, "tenant.display_name")
        if "privacy_budget" in paths:
            changes["budget_epsilon"], changes["budget_delta"] = _budget(request.tenant.privacy_budget,
                                                                         "tenant.privacy_budget")
        self.db.update_tenant(row.id, **changes)
        return ts.UpdateTenantResponse(tenant=convert.tenant_to_proto(self.db.tenant(row.id)))

    def DeleteTenant(self, request, context):
        """Revokes the tenant's keys and withdraws its publications (the inference server unloads them at its next
        look). The publications go first, so that a failure (the object store down) leaves the tenant in place for
        a retry; after the keys, a second look catches one published by a call that was already under way."""
        _admin()
        row = self._visible_tenant(request.name)
        withdrawn = publications.withdraw_tenant(self.store, row.id)
        self.keys.delete_tenant(row.id)  # one transaction: no key issued meanwhile survives it
        try:
            withdrawn += publications.withdraw_tenant(self.store, row.id)
        except Exception:  # noqa: BLE001 - the tenant is deleted; its keys no longer reach Predict either way
            log.exception("tenant %s deleted, but its publications could not be listed again", row.id)
        log.info("tenant %s deleted; its keys are revoked and its %d publication(s) withdrawn", row.id, withdrawn)
        return ts.DeleteTenantResponse(tenant=convert.tenant_to_proto(self.db.tenant(row.id)))

    def CreateApiKey(self, request, context):
        tenant = _tenant_caller()
        key_id, secret = self.keys.issue(tenant, _display_name(request.display_name, "display_name"))
        return ts.CreateApiKeyResponse(api_key=convert.api_key_to_proto(tenant, *self.keys.key(tenant, key_id)),
                                       api_key_secret=secret)

    def ListApiKeys(self, request, context):
        tenant = _tenant_caller()
        rows, token = pagination.page(request, "api_keys",
                                      lambda after, limit: self.keys.list(tenant, after=after or "", limit=limit),
                                      lambda row: row[0])
        return ts.ListApiKeysResponse(api_keys=[convert.api_key_to_proto(tenant, *r) for r in rows],
                                      next_page_token=token)

    def RevokeApiKey(self, request, context):
        tenant = _tenant_caller()
        owner, key_id = names.api_key(request.name)
        if owner != tenant:
            raise NotFound("api key", request.name)
        self.keys.revoke(tenant, key_id)
        return ts.RevokeApiKeyResponse(api_key=convert.api_key_to_proto(tenant, *self.keys.key(tenant, key_id)))
