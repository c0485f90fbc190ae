"""The workers a protection job calls, as the service credential acting for the job's tenant: the anonymizer
replicas (previews, the generator, the whole dataset), the unlearning service (the model's update) and the
distortion service (MDP).

    workers = JobWorkers(["10.0.0.7:50052"], "10.0.0.9:50055", "10.0.0.8:50053", service_token)
    result = workers.finish(ctx, channel, operation, an.GeneratorResult, stage="training the generator")

`finish` waits for a worker's long-running operation while the job's own operation reports its progress, and
cancels the worker's operation when the tenant cancels the job (the worker then releases what it reserved in
the ledger); when the coordinator is only stopping, the worker's operation goes on, and the job finds it again
(the same request_id) when it carries on. A worker's refusal becomes the job's error by `worker_error`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2

from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.operations import OperationsClient, call, progress_of
from umbra.runtime.errors import BudgetExhausted, Cancelled, FailedPrecondition, UmbraError, Unavailable
from umbra.services.coordinator import sharding
from umbra.runtime.operations.runner import interrupted
from umbra.unlearning.v1 import unlearning_service_pb2_grpc

log = logging.getLogger(__name__)

TIMEOUT = 60.0  # one RPC to a worker
POLL_SECONDS = 1.0
RETRY_SECONDS = 1.0  # between calls to a worker that cannot be reached


class WorkerFailed(OperationFailed):
    """A worker's operation ended with an error; `reason` is its ErrorInfo reason ("" when it gave none)."""

    def __init__(self, op):
        super().__init__(op.name, op.error.code, op.error.message)
        self.reason = ""
        for detail in op.error.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                self.reason = info.reason


class JobWorkers:
    def __init__(self, anonymizers: list[str], unlearning: str, distortion: str, service_token: str, *,
                 wait_seconds: float = 120.0):
        """`wait_seconds`: how long a worker that cannot be reached (restarting) is waited for before the job fails
        (UMBRA_WORKER_WAIT_SECONDS)."""
        if not anonymizers:
            raise ValueError("no anonymizer address")
        self.anonymizer_targets, self.token, self.wait_seconds = anonymizers, service_token, wait_seconds
        self.unlearning_target, self.distortion_target = unlearning, distortion
        self._channels: dict[tuple[str, str], grpc.Channel] = {}  # one per tenant and worker address, reused
        self._lock = threading.Lock()

    def channel(self, tenant: str, target: str) -> grpc.Channel:
        with self._lock:
            if (tenant, target) not in self._channels:
                self._channels[(tenant, target)] = open_channel(target, self.token, tenant=tenant)
            return self._channels[(tenant, target)]

    def anonymizer(self, tenant: str) -> anonymizer_service_pb2_grpc.AnonymizerServiceStub:
        """The first anonymizer replica (previews and the generator; the dataset goes to every replica)."""
        return anonymizer_service_pb2_grpc.AnonymizerServiceStub(self.channel(tenant, self.anonymizer_targets[0]))

    def unlearning(self, tenant: str) -> unlearning_service_pb2_grpc.UnlearningServiceStub:
        if not self.unlearning_target:
            raise FailedPrecondition("no unlearning service is configured for the coordinator (UMBRA_UNLEARNING_URL)")
        return unlearning_service_pb2_grpc.UnlearningServiceStub(self.channel(tenant, self.unlearning_target))

    def distortion(self, tenant: str) -> distortion_service_pb2_grpc.DistortionServiceStub:
        if not self.distortion_target:
            raise FailedPrecondition("no distortion service is configured for the coordinator (UMBRA_DISTORTION_URL)")
        return distortion_service_pb2_grpc.DistortionServiceStub(self.channel(tenant, self.distortion_target))

    def call(self, ctx, rpc, request, *, timeout: float, worker: str):
        """`rpc(request)`, retried while the worker cannot be reached, for up to `wait_seconds` (a worker that
        restarts is waited for); the request's request_id makes a retry the same call."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                return call(rpc, request, timeout=timeout)
            except UmbraRpcError as exc:
                if exc.code not in sharding.UNREACHABLE or time.monotonic() >= deadline:
                    raise _waited(exc, worker, self.wait_seconds) from None
                log.warning("the %s cannot be reached (%s): waiting for it", worker, exc.code.name)
            if ctx.cancelled:
                raise Cancelled("cancelled by request")
            time.sleep(RETRY_SECONDS)

    def finish(self, ctx, channel: grpc.Channel, operation, response_type, *, stage: str,
               restart: Callable[[], object] | None = None, worker: str = "worker"):
        """The response of the worker's `operation` once it is done; its progress shows as the job's stage.
        A worker that cannot be reached is waited for, up to `wait_seconds`; an operation that its restart
        interrupted is started again by `restart()` (the start RPC with the same request_id), when given.
        Raises Cancelled (after cancelling the worker's operation) when the job is cancelled, WorkerFailed when
        the work failed, UmbraRpcError when the worker cannot be asked (for longer than the wait)."""
        operations = OperationsClient(channel, TIMEOUT)
        op = operation
        unreachable_since: float | None = None
        while not op.done or (restart is not None and interrupted(op)):
            if ctx.cancelled:
                if ctx.metadata.progress.cancel_requested:  # the tenant's cancel, not a shutdown of the coordinator
                    sharding.cancel_and_wait(operations, op.name)
                raise Cancelled("cancelled by request")
            try:
                if op.done:  # interrupted by the worker's restart: the same request starts it again
                    log.warning("the %s's operation %s was interrupted by its restart: starting it again", worker,
                                op.name)
                    op = restart()
                    continue
                op = operations.wait(op.name, timeout=POLL_SECONDS, poll_seconds=POLL_SECONDS)
                unreachable_since = None
            except UmbraRpcError as exc:
                if exc.code not in sharding.UNREACHABLE:
                    raise
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since >= self.wait_seconds:
                    raise _waited(exc, worker, self.wait_seconds) from None
                ctx.report(stage=f"{stage}: waiting for the {worker}, which cannot be reached")
                time.sleep(RETRY_SECONDS)
                continue
            progress = progress_of(op)
            if progress is not None and progress.stage:
                ctx.report(stage=f"{stage}: {progress.stage}", done=progress.done, total=progress.total,
                           unit=progress.unit)
        if op.HasField("error"):
            raise WorkerFailed(op)
        response = response_type()
        op.response.Unpack(response)
        return response


def _waited(exc: UmbraRpcError, worker: str, seconds: float) -> UmbraRpcError:
    """The worker's last refusal, saying how long it was waited for when it could not be reached."""
    if exc.code in sharding.UNREACHABLE:
        exc.message = f"{exc.message} (waited {seconds:g} s for the {worker}: UMBRA_WORKER_WAIT_SECONDS)"
    return exc


def worker_error(exc: UmbraRpcError | OperationFailed, worker: str) -> UmbraError:
    """A worker's refusal or failure as the job's error: a spent budget stays FAILED_PRECONDITION
    PRIVACY_BUDGET_EXHAUSTED, an unreachable worker is UNAVAILABLE, anything else FAILED_PRECONDITION naming it."""
    if isinstance(exc, OperationFailed):
        return FailedPrecondition(f"the {worker} failed: {exc.message}", reason="WORKER_FAILED")
    if exc.reason == "PRIVACY_BUDGET_EXHAUSTED":
        return BudgetExhausted(exc.message, metadata=exc.metadata)
    if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return Unavailable(f"the {worker} cannot be reached: {exc.message}")
    return FailedPrecondition(f"the {worker} refused: {exc.message}", reason=exc.reason or "WORKER_REFUSED")
