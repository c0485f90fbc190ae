"""Errors as the SDK raises them: the status code, the message, and the `google.rpc.ErrorInfo` details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class UmbraRpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "", field: str = "",
                 metadata: dict[str, str] | None = None, rpc_id: str = ""):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.metadata = metadata or {}
        self.rpc_id = rpc_id

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "UmbraRpcError":
        reason, field, metadata = "", "", {}
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
        rpc_id = ""
        if hasattr(error, "trailing_metadata"):
            rpc_id = dict(error.trailing_metadata() or ()).get("x-request-id", "")
        return cls(error.code(), error.details() or "", reason=reason, field=field, metadata=metadata,
                   rpc_id=rpc_id)


class OperationFailed(Exception):
    """A long-running operation ended with an error."""

    def __init__(self, name: str, code: int, message: str):
        super().__init__(f"{name} failed ({grpc_code_name(code)}): {message}")
        self.name = name
        self.code = code
        self.message = message


def grpc_code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)
