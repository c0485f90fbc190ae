"""A worker's side of the coordinator's privacy ledger: reserve a charge before the work that spends privacy,
commit it when the work is done, release it when the work fails. Workers keep no budget state of their own.

    ledger = LedgerClient(config.coordinator_url, config.service_token)
    ledger.reserve(tenant, "faces", cost, request_id="anonymizer/Anonymize/…", spent_by="Anonymize", limit=None)
    with ledger.settles(tenant, request_id) as settlement:  # commits on success, releases on any exception
        ...the work...
        settlement.cost = spent                             # optional: what the work really spent

The coordinator's refusals come back as this service's own errors (a spent budget stays FAILED_PRECONDITION
PRIVACY_BUDGET_EXHAUSTED, with the remaining budget in its metadata); a coordinator that cannot be reached is
UNAVAILABLE, and no work starts without its reservation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from umbra.client.channel import open_channel
from umbra.client.errors import UmbraRpcError
from umbra.client.operations import call
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.privacy.ledger import Budget
from umbra.privacy.mechanisms import Cost
from umbra.runtime.errors import BudgetExhausted, FailedPrecondition, Interrupted, InvalidInput, Unavailable
from umbra.services.convert import budget_to_proto, privacy_cost_to_proto

log = logging.getLogger(__name__)
TIMEOUT = 60.0  # a reservation composes the tenant's whole ledger (DP-SGD entries through the PRV accountant)
COMMIT_PATIENCE = 120.0  # how long finished work waits for an unreachable coordinator (UMBRA_LEDGER_COMMIT_SECONDS)


class LedgerClient:
    def __init__(self, target: str, service_token: str, *, commit_patience: float = COMMIT_PATIENCE):
        self.target, self._token, self.commit_patience = target, service_token, commit_patience
        self._stubs: dict[str, ledger_service_pb2_grpc.LedgerServiceStub] = {}  # one channel per tenant, reused
        self._lock = threading.Lock()

    def _stub(self, tenant: str) -> ledger_service_pb2_grpc.LedgerServiceStub:
        with self._lock:
            if tenant not in self._stubs:
                channel = open_channel(self.target, self._token, tenant=tenant)
                self._stubs[tenant] = ledger_service_pb2_grpc.LedgerServiceStub(channel)
            return self._stubs[tenant]

    def _call(self, tenant: str, method: str, request):
        stub = self._stub(tenant)
        try:
            return call(getattr(stub, method), request, timeout=TIMEOUT)
        except UmbraRpcError as exc:
            if exc.reason == "PRIVACY_BUDGET_EXHAUSTED":
                raise BudgetExhausted(exc.message, metadata=exc.metadata) from None
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"the privacy ledger (coordinator at {self.target}) cannot be reached: "
                                  f"{exc.message}") from None
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT and exc.field.startswith("budget"):
                raise InvalidInput(exc.field, exc.message.removeprefix(f"{exc.field}: ")) from None
            raise FailedPrecondition(f"the privacy ledger refused: {exc.message}", reason=exc.reason or None,
                                     metadata=exc.metadata) from None

    def reserve(self, tenant: str, dataset: str, cost: Cost, *, request_id: str, spent_by: str,
                limit: Budget | None = None) -> Budget:
        """Reserves the charge (a retry with the same request_id charges nothing more); returns what is left."""
        request = ls.ReservePrivacyChargeRequest(dataset=f"datasets/{dataset}", cost=privacy_cost_to_proto(cost),
                                                 request_id=request_id, spent_by=spent_by)
        if limit is not None:
            request.budget.CopyFrom(budget_to_proto(limit))
        remaining = self._call(tenant, "ReservePrivacyCharge", request).remaining
        return Budget(remaining.epsilon, remaining.delta)

    def commit(self, tenant: str, request_id: str, cost: Cost | None = None) -> None:
        request = ls.CommitPrivacyChargeRequest(request_id=request_id)
        if cost is not None:
            request.cost.CopyFrom(privacy_cost_to_proto(cost))
        self._call(tenant, "CommitPrivacyCharge", request)

    def release(self, tenant: str, request_id: str, reason: str) -> None:
        self._call(tenant, "ReleasePrivacyCharge", ls.ReleasePrivacyChargeRequest(request_id=request_id,
                                                                                  reason=reason[:500]))

    @contextmanager
    def settles(self, tenant: str, request_id: str) -> Iterator[Settlement]:
        """Commits the reserved charge when the block ends (with `settlement.cost` when the block set it: what the
        work really spent), releases it when the block raises; nothing at all for request_id "" (no charge)."""
        settlement = Settlement()
        try:
            yield settlement
        except BaseException as exc:
            if request_id:
                try:
                    self.release(tenant, request_id, f"{type(exc).__name__}: {exc}")
                except Exception:  # the work's own error is the one to report; the entry stays reserved (counted)
                    log.exception("could not release the privacy charge %s", request_id)
            raise
        if request_id:
            self._commit_patiently(tenant, request_id, settlement.cost)

    def _commit_patiently(self, tenant: str, request_id: str, cost: Cost | None) -> None:
        """The work is done: its charge is committed, retrying (it is idempotent) while the coordinator cannot be
        reached, for up to `commit_patience` seconds. Then Interrupted, never a failure: the entry stays reserved
        (counted), and the same request_id runs the work again (which finds what it wrote) and commits."""
        deadline, pause = time.monotonic() + self.commit_patience, 0.5
        while True:
            try:
                return self.commit(tenant, request_id, cost)
            except Unavailable as exc:
                if time.monotonic() + pause > deadline:
                    raise Interrupted(f"the work is done, but its privacy charge could not be committed: "
                                      f"{exc.message}; retry the request (the same request_id commits it)") from None
                log.warning("committing the privacy charge %s: the ledger cannot be reached; retrying in %.1f s",
                            request_id, pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)


@dataclass
class Settlement:
    cost: Cost | None = None  # the final cost, at most the reserved one; None: the reserved cost
