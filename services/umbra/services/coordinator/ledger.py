"""LedgerService: the tenant's privacy balance and entries (public), and the workers' reserve → commit → release
(internal: the service credential, the tenant in x-umbra-tenant). The ledger itself is umbra.privacy.ledger."""

from __future__ import annotations

import logging

from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.privacy.ledger import PrivacyLedger
from umbra.runtime import auth, names, pagination
from umbra.runtime.errors import InvalidInput, PermissionDenied
from umbra.services.convert import budget_from_proto, budget_to_proto, privacy_cost_from_proto
from umbra.services.coordinator import convert

log = logging.getLogger(__name__)
MAX_TEXT = 500


def _tenant() -> str:
    return auth.require_tenant("the ledger is a tenant's: call with a tenant API key")


def _worker() -> str:
    principal = auth.current()
    if principal.kind != "service" or not principal.tenant:
        raise PermissionDenied("only Umbra's own services charge the ledger (service credential, tenant named)")
    return principal.tenant


def _dataset(name: str) -> str:
    return names.dataset(name, "dataset") if name else ""


def _request_id(value: str) -> str:
    if not value or len(value) > MAX_TEXT:
        raise InvalidInput("request_id", f"is required, at most {MAX_TEXT} characters")
    return value


class LedgerServicer(ledger_service_pb2_grpc.LedgerServiceServicer):
    def __init__(self, ledger: PrivacyLedger):
        self.ledger = ledger

    def GetPrivacyBalance(self, request, context):
        return convert.balance_to_proto(self.ledger.balance(_tenant(), _dataset(request.dataset)))

    def ListLedgerEntries(self, request, context):
        tenant, dataset = _tenant(), _dataset(request.dataset)
        entries, token = pagination.page(
            request, f"ledger {dataset}",
            lambda before, limit: self.ledger.entries(tenant, dataset=dataset, before=before or "", limit=limit),
            lambda entry: entry.id)
        return ls.ListLedgerEntriesResponse(entries=[convert.ledger_entry_to_proto(e) for e in entries],
                                            next_page_token=token)

    def ReservePrivacyCharge(self, request, context):
        tenant = _worker()
        if not request.dataset:
            raise InvalidInput("dataset", "name the dataset whose people the charge is against")
        if len(request.spent_by) > MAX_TEXT:
            raise InvalidInput("spent_by", f"must be at most {MAX_TEXT} characters")
        entry, remaining = self.ledger.reserve(
            tenant, _dataset(request.dataset), privacy_cost_from_proto(request.cost, "cost"),
            request_id=_request_id(request.request_id), spent_by=request.spent_by,
            limit=budget_from_proto(request.budget, "budget"))
        log.info("privacy charge %s reserved (epsilon %.6g)", entry.id, entry.cost.epsilon)
        return ls.ReservePrivacyChargeResponse(entry=convert.ledger_entry_to_proto(entry),
                                               remaining=budget_to_proto(remaining))

    def CommitPrivacyCharge(self, request, context):
        cost = privacy_cost_from_proto(request.cost, "cost") if request.HasField("cost") else None
        entry = self.ledger.commit(_worker(), _request_id(request.request_id), cost)
        return ls.CommitPrivacyChargeResponse(entry=convert.ledger_entry_to_proto(entry))

    def ReleasePrivacyCharge(self, request, context):
        entry = self.ledger.release(_worker(), _request_id(request.request_id))
        log.info("privacy charge %s released: %s", entry.id, request.reason[:MAX_TEXT] or "no reason given")
        return ls.ReleasePrivacyChargeResponse(entry=convert.ledger_entry_to_proto(entry))
