"""`google.longrunning.Operations` over the runner: every service serves it for its own operations.

Operations belong to a tenant: a caller sees only its tenant's operations (internal services act for the
tenant the coordinator names), and another tenant's operation answers NOT_FOUND.
"""

from __future__ import annotations

from google.longrunning import operations_proto_pb2 as lro
from google.longrunning import operations_pb2_grpc
from google.protobuf import empty_pb2

from umbra.runtime import auth, pagination
from umbra.runtime.errors import InvalidInput
from umbra.runtime.operations.runner import OperationRunner

_FILTERS = {"": None, "done=true": True, "done=false": False}


def _tenant() -> str:
    return auth.current().tenant


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    def __init__(self, runner: OperationRunner, max_wait_seconds: float):
        self._runner = runner
        self._max_wait = max_wait_seconds

    def GetOperation(self, request, context):
        return self._runner.get(request.name, _tenant()).operation

    def ListOperations(self, request, context):
        if request.name not in ("", "operations"):
            raise InvalidInput("name", "must be empty or 'operations'")
        normalized = request.filter.replace(" ", "").lower()
        if normalized not in _FILTERS:
            raise InvalidInput("filter", "supported filters are '', 'done = true' and 'done = false'")
        tenant, done = _tenant(), _FILTERS[normalized]
        records, token = pagination.page(
            request, normalized, lambda after, limit: self._runner.store.list(tenant, after=after, limit=limit,
                                                                              done=done),
            lambda record: record.operation.name)
        return lro.ListOperationsResponse(operations=[r.operation for r in records], next_page_token=token)

    def DeleteOperation(self, request, context):
        self._runner.delete(request.name, _tenant())
        return empty_pb2.Empty()

    def CancelOperation(self, request, context):
        self._runner.cancel(request.name, _tenant())
        return empty_pb2.Empty()

    def WaitOperation(self, request, context):
        timeout = self._max_wait
        if request.HasField("timeout"):
            requested = request.timeout.seconds + request.timeout.nanos / 1e9
            if requested < 0:
                raise InvalidInput("timeout", "must not be negative")
            timeout = min(requested, self._max_wait)
        remaining = context.time_remaining()
        if remaining is not None:  # answer before the caller's deadline, with the operation as it stands
            timeout = min(timeout, max(remaining - 0.5, 0.0))
        return self._runner.wait(request.name, _tenant(), timeout)
