"""Long-running operations from the client side: get, list, cancel, and wait with a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import duration_pb2, message

from umbra.client import protos
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.progress import Progress

T = TypeVar("T")


def call(fn: Callable[..., T], *args, **kwargs) -> T:
    """Runs a stub call, turning grpc.RpcError into UmbraRpcError (with its ErrorInfo reason and field)."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as exc:
        raise UmbraRpcError.from_rpc_error(exc) from None


def progress_of(op: lro.Operation):
    """The operation's `umbra.common.v1.OperationProgress`, or None."""
    metadata = protos.unpack(op.metadata)
    return getattr(metadata, "progress", None) if metadata is not None else None


class OperationsClient:
    def __init__(self, channel: grpc.Channel, timeout: float = 30.0):
        protos.load_all()
        self.stub = operations_pb2_grpc.OperationsStub(channel)
        self.timeout = timeout

    def get(self, name: str) -> lro.Operation:
        return call(self.stub.GetOperation, lro.GetOperationRequest(name=name), timeout=self.timeout)

    def list(self, *, filter: str = "", page_size: int = 0) -> Iterator[lro.Operation]:
        """Every operation of the caller's tenant, following page tokens."""
        token = ""
        while True:
            page = call(self.stub.ListOperations, lro.ListOperationsRequest(
                name="operations", filter=filter, page_size=page_size, page_token=token), timeout=self.timeout)
            yield from page.operations
            token = page.next_page_token
            if not token:
                return

    def cancel(self, name: str) -> None:
        call(self.stub.CancelOperation, lro.CancelOperationRequest(name=name), timeout=self.timeout)

    def delete(self, name: str) -> None:
        call(self.stub.DeleteOperation, lro.DeleteOperationRequest(name=name), timeout=self.timeout)

    def wait(self, name: str, *, timeout: float | None = None, progress: bool = False,
             poll_seconds: float = 5.0) -> lro.Operation:
        """Waits until the operation is done (or `timeout` seconds of wall time pass, plus at most one late answer
        to a poll, bounded by the client's RPC timeout) and returns it; with progress=True a bar on stderr follows
        its stage and done/total (off a terminal, a line every few seconds)."""
        bar = Progress() if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout  # wall time, however long each poll takes
        try:
            while True:
                step = poll_seconds if deadline is None else max(min(poll_seconds, deadline - time.monotonic()), 0.0)
                request = lro.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(seconds=int(step),
                                                   nanos=int((step % 1) * 1e9)))
                op = call(self.stub.WaitOperation, request, timeout=step + self.timeout)
                if bar is not None:
                    _show(bar, op)
                if op.done or (deadline is not None and time.monotonic() >= deadline):
                    return op
        finally:
            if bar is not None:
                bar.close()

    def result(self, name: str, response_type: type[message.Message], **wait_kwargs) -> message.Message:
        """Waits for the operation and returns its response, or raises OperationFailed."""
        op = self.wait(name, **wait_kwargs)
        if not op.done:
            raise TimeoutError(f"{name} is still running")
        if op.HasField("error"):
            raise OperationFailed(name, op.error.code, op.error.message)
        response = response_type()
        op.response.Unpack(response)
        return response


def _show(bar: Progress, op: lro.Operation) -> None:
    p = progress_of(op)
    if p is None:
        return
    bar.show(done=p.done, total=p.total, stage=p.stage or "running", unit=p.unit, note=p.message)
