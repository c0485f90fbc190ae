"""The one exception hierarchy of Umbra's services. The interceptor maps each class to a status code and a
`google.rpc.ErrorInfo`; servicers and algorithms raise these and never call `context.abort` themselves."""

from __future__ import annotations

import grpc

DOMAIN = "umbra.dev"


class UmbraError(Exception):
    """Base class. `reason` is an UPPER_SNAKE code for machines; the message is for people."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidInput(UmbraError):
    """A field is missing or malformed. Always names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}", metadata={"field": field})
        self.field = field
        self.problem = problem


class NotFound(UmbraError):
    """No such resource for this caller (also the answer for another tenant's resources)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"

    def __init__(self, resource: str, name: str):
        super().__init__(f"{resource} {name!r} not found", metadata={"resource": resource, "name": name})


class AlreadyExists(UmbraError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class Conflict(UmbraError):
    """A concurrent change won; retry after reading the resource again."""

    code = grpc.StatusCode.ABORTED
    reason = "CONFLICT"


class FailedPrecondition(UmbraError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class BudgetExhausted(FailedPrecondition):
    """The work would spend more privacy than the budget has left."""

    reason = "PRIVACY_BUDGET_EXHAUSTED"


class Unauthenticated(UmbraError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(UmbraError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unavailable(UmbraError):
    """A dependency (object storage, another service) cannot be reached; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Cancelled(UmbraError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class Interrupted(UmbraError):
    """An operation whose process stopped before it finished."""

    code = grpc.StatusCode.ABORTED
    reason = "OPERATION_INTERRUPTED"


class ResourceExhausted(UmbraError):
    """The caller is over a concurrency limit (calls or streams at once); retrying after `retry_after` seconds,
    once some of its calls have finished, may succeed. The interceptor adds a `google.rpc.RetryInfo`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None,
                 retry_after: float = 1.0):
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class StreamTimeout(UmbraError):
    """A client stream sent no message for too long (STREAM_IDLE) or lasted longer than allowed
    (STREAM_TOO_LONG); the server ended it to free its thread."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "STREAM_IDLE"


class DataLoss(UmbraError):
    """Stored data that cannot be used as what it claims to be (an image that does not decode, or is far larger
    than its version's size): the data is at fault, not the request or the service."""

    code = grpc.StatusCode.DATA_LOSS
    reason = "DATA_CORRUPT"
