"""One shape for every long-running RPC: the servicer validates and converts, `plan` refuses bad input by field
before any work, and the operation runs `run` on the checked job. After a restart the same `plan` and `run` are
called again with the request the operation stored, so an operation resumes exactly as it started (the run finds
its own checkpoints, keyed by the operation's name).

    self._train = LongRunning(operations, "Train", ts.TrainRequest, ts.TrainMetadata, plan=self._plan,
                              run=self._run)          # in the servicer's __init__, before the server recovers

    def Train(self, request, context):
        return ts.TrainResponse(operation=self._train.start(tenant, request))

`plan(tenant, request) -> job` may be called more than once for one operation (at the start and after every
restart): anything it does besides checking must be idempotent. `run(ctx, job) -> response message` gets the
operation's context (progress, cancellation; umbra.runtime.operations.runner).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import message

from umbra.runtime.operations.runner import OperationContext, OperationRunner

Job = TypeVar("Job")


class LongRunning(Generic[Job]):
    """One kind of long-running operation of a service."""

    def __init__(self, runner: OperationRunner, kind: str, request_type: type[message.Message],
                 metadata_type: type[message.Message], *, plan: Callable[[str, message.Message], Job],
                 run: Callable[[OperationContext, Job], message.Message], resumable: bool = True):
        self.kind = kind
        self._runner, self._request_type, self._metadata_type = runner, request_type, metadata_type
        self._plan, self._run, self._resumable = plan, run, resumable
        if resumable:
            runner.register_resumer(kind, self._resume)

    def start(self, tenant: str, request: message.Message) -> lro.Operation:
        """Plans the request (raising before any work) and starts the operation; a repeated `request_id`
        returns the operation it started first."""
        job = self._plan(tenant, request)
        return self._runner.start(kind=self.kind, tenant=tenant, metadata=self._metadata_type(),
                                  work=lambda ctx: self._run(ctx, job), request_id=request.request_id,
                                  resume_request=request if self._resumable else None)

    def _resume(self, ctx: OperationContext, request_bytes: bytes) -> message.Message:
        request = self._request_type.FromString(request_bytes)
        return self._run(ctx, self._plan(ctx.tenant, request))
