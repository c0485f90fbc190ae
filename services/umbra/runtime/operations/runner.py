"""Runs long work on background threads and keeps its operation record current.

    op = runner.start(kind="Train", tenant=t, metadata=TrainMetadata(), work=train, request_id=req.request_id)

Services start their long work through `long_running(...)` (umbra.runtime.operations.long_running), which plans a
request before any work and plans it again from the stored request after a restart.

`work(ctx)` gets an `OperationContext`: it reports progress (persisted into the operation's typed metadata,
whose first field is always a `umbra.common.v1.OperationProgress` named `progress`; the work fills any other
field of it, `progress.privacy_spent` included, itself), checks for cancellation, and returns the response
message. An `UmbraError` it raises becomes the operation's error with its code;
anything else becomes INTERNAL with a generic message (the traceback is logged once).

After a restart, `recover()` (called by the server once the service has registered its resumers) picks up
what a previous process left unfinished: a resumable operation whose kind has a resumer starts again from
its stored request (the work finds its own checkpoints); any other is completed with an OPERATION_INTERRUPTED
error, so a client asking about it gets an answer, never NOT_FOUND. A retry of the interrupted request (the same
request_id) starts it again: an interruption is not the request's answer, so a retry after a crash finishes.

The work runs on a `FairPool` (umbra.runtime.operations.fair_pool) of `max_workers` slots shared fairly among
tenants: per-tenant queues, and each slot that frees goes to the waiting tenant that holds the fewest (issue 26).
A queued operation that is cancelled leaves its queue at once and ends CANCELLED; work waiting for something
outside the service (a tenant's answer) gives its slot back meanwhile with `ctx.waiting()`.

Each operation is a span (umbra.runtime.tracing), child of the call that started it, with an event per stage; and
it is counted (umbra.runtime.metrics): running now, ended by state, how long each stage took, and the images its
progress reported done (unit "images").
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import any_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from opentelemetry import trace

from umbra.client import protos
from umbra.runtime import auth, logs, metrics, names, tracing
from umbra.runtime.errors import (DOMAIN, Cancelled, FailedPrecondition, Interrupted, NotFound,
                                  UmbraError)
from umbra.runtime.operations.fair_pool import FairPool
from umbra.runtime.operations.store import OperationStore, Record

log = logging.getLogger(__name__)


def interrupted(op: lro.Operation) -> bool:
    """Whether an operation ended because its process stopped (not because of the work or the caller)."""
    if not op.done or op.error.code != code_pb2.ABORTED:
        return False
    for detail in op.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == Interrupted.reason:
            return True
    return False


ENDED = ("done", "failed", "cancelled", "interrupted")
_PLAIN_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")


def _stage_label(stage: str) -> str:
    """A stage as a metric label: its plain words only, without figures or names ("round 3: previewing at intensity
    0.750" -> "round previewing at intensity"; "updating models/smile/versions/2 by unlearning" -> "updating by
    unlearning"), so that the label's values stay few."""
    words = [word.strip(",.;:()'\"") for word in stage.split()]
    return " ".join(word for word in words if _PLAIN_WORD.fullmatch(word))[:80] or "other"


def new_name() -> str:
    """Time-ordered, so listing by name lists by creation."""
    return f"operations/{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def _error_status(exc: UmbraError) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata))
    return status_pb2.Status(code=exc.code.value[0], message=exc.message, details=[info])


class OperationContext:
    """What a piece of long work sees of its operation."""

    def __init__(self, runner: "OperationRunner", op: lro.Operation, metadata: message.Message, tenant: str,
                 kind: str):
        self._runner = runner
        self._op = op
        self.metadata = metadata  # the typed metadata; edit its own fields, then call save()
        self.tenant = tenant
        self.kind = kind
        self.cancel_event = threading.Event()
        self._waiting = False
        self._stage = (metadata.progress.stage, time.monotonic())  # the stage being timed, and since when
        self._images_done = metadata.progress.done if metadata.progress.unit == "images" else 0
        self.trace_parent = tracing.current()  # the context of the call that started it (or of the recovery)

    @property
    def name(self) -> str:
        return self._op.name

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raises Cancelled once a client has asked to cancel; call it between units of work."""
        if self.cancel_event.is_set():
            raise Cancelled("cancelled by request")

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Wrap what waits for an event outside the service (the tenant's feedback, say) in `with ctx.waiting():`.
        Inside it, the operation's running slot is given back to the service's pool, so queued work (another
        tenant's) starts meanwhile; on leaving, the work takes a slot again, fairly, as queued work does, and may
        wait there for one. It costs a thread, not a slot: this thread stays blocked in whatever the block waits
        on. Keep inside it only waiting (no heavy work), and check for cancellation after it. Leaving it once the
        operation is cancelled, or the service is stopping, takes a slot at once (for a moment past the pool's
        size), so the work ends without queueing. Call it from the work's own thread; nested uses count as one."""
        if self._waiting:
            yield
            return
        self._waiting = True
        try:
            with self._runner._pool.lent(self.tenant, cut_in=self._ending):
                yield
        finally:
            self._waiting = False

    def _ending(self) -> bool:
        return self.cancel_event.is_set() or self._runner._stopping.is_set()

    def report(self, *, stage: str | None = None, done: int | None = None, total: int | None = None,
               unit: str | None = None, message: str | None = None) -> None:
        """Updates the progress (fields left None stay as they are) and saves the metadata."""
        progress = self.metadata.progress
        if stage is not None:
            progress.stage = stage
        if done is not None:
            progress.done = done
        if total is not None:
            progress.total = total
        if unit is not None:
            progress.unit = unit
        if message is not None:
            progress.message = message
        self._observe()
        self.save()

    def _observe(self) -> None:
        """Metrics and the span's events for a progress change: a new stage ends the last one's timing; images
        reported done since the last report count as processed."""
        progress = self.metadata.progress
        service = self._runner.service
        if progress.unit == "images":
            if progress.done > self._images_done:
                metrics.images(service, self.kind, progress.done - self._images_done)
            self._images_done = progress.done
        stage, since = self._stage
        if progress.stage != stage:
            now = time.monotonic()
            if stage:
                metrics.stage_seconds.labels(service, self.kind, _stage_label(stage)).observe(now - since)
            self._stage = (progress.stage, now)
            trace.get_current_span().add_event("stage", {"stage": progress.stage})

    def save(self) -> None:
        self._runner._save(self._op, self.metadata)


class OperationRunner:
    def __init__(self, store: OperationStore, *, service: str, max_workers: int = 4):
        """`max_workers`: how many operations run at once (the pool's slots, shared fairly among tenants)."""
        self.store = store
        self.service = service
        self._pool = FairPool(max_workers, name="operation")
        self._running: dict[str, OperationContext] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._resumers: dict[str, Callable[[OperationContext, bytes], message.Message]] = {}

    def register_resumer(self, kind: str, resume: Callable[[OperationContext, bytes], message.Message]) -> None:
        """`resume(ctx, request_bytes)` continues an operation of `kind` after a restart."""
        self._resumers[kind] = resume

    def recover(self) -> None:
        """Resumes or interrupts what a previous process left unfinished (see the module docstring)."""
        for record in self.store.unfinished():
            with self._lock:
                if record.operation.name in self._running:  # started by this process already (before it served)
                    continue
            resume = self._resumers.get(record.kind)
            if not (record.resumable and resume and not record.cancel_requested):
                continue
            metadata = protos.unpack(record.operation.metadata)
            if metadata is None or not hasattr(metadata, "progress"):
                continue
            ctx = OperationContext(self, record.operation, metadata, record.tenant, record.kind)
            with self._lock:
                self._running[record.operation.name] = ctx
            metadata.progress.message = "resumed after a restart"
            request = record.request
            self._submit(ctx, lambda c, resume=resume, request=request: resume(c, request),
                         auth.Principal("service", record.tenant))
            log.info("operation %s (%s) resumed after a restart", record.operation.name, record.kind)
        self._interrupt_unfinished("the service restarted before it finished")

    def find(self, tenant: str, kind: str, request_id: str) -> lro.Operation | None:
        """The operation that a request_id started and that still answers for it (an interrupted one does not:
        `start` with the same request_id runs the request again)."""
        record = self.store.find(tenant, kind, request_id) if request_id else None
        return None if record is None or interrupted(record.operation) else record.operation

    # -- starting and running -------------------------------------------------------------------------------

    def start(self, *, kind: str, tenant: str, metadata: message.Message,
              work: Callable[[OperationContext], message.Message], request_id: str = "",
              resume_request: message.Message | None = None) -> lro.Operation:
        """Records a new operation and starts its work; a repeated request_id returns the first operation.
        With `resume_request`, the operation is resumable: after a restart, the resumer registered for `kind`
        gets this request back (serialized) and continues the work."""
        if self._stopping.is_set():
            raise FailedPrecondition("the service is shutting down; retry on another replica",
                                     reason="SHUTTING_DOWN")
        op = lro.Operation(name=new_name())
        progress = metadata.progress
        progress.stage = "queued"
        progress.create_time.GetCurrentTime()
        progress.update_time.CopyFrom(progress.create_time)
        op.metadata.Pack(metadata)
        record = self.store.insert(op, tenant=tenant, kind=kind, request_id=request_id,
                                   request=resume_request.SerializeToString() if resume_request else b"",
                                   resumable=resume_request is not None)
        if record.operation.name != op.name and interrupted(record.operation):
            log.info("request_id seen before, by %s, which a restart interrupted: starting it again",
                     record.operation.name)
            self.store.forget_request_id(record.operation.name)
            record = self.store.insert(op, tenant=tenant, kind=kind, request_id=request_id,
                                       request=resume_request.SerializeToString() if resume_request else b"",
                                       resumable=resume_request is not None)
        if record.operation.name != op.name:
            log.info("request_id seen before; returning %s", record.operation.name)
            return record.operation
        ctx = OperationContext(self, op, metadata, tenant, kind)
        with self._lock:
            self._running[op.name] = ctx
        self._submit(ctx, work, auth.current())
        log.info("operation %s (%s) started", op.name, kind)
        return op

    def _submit(self, ctx: OperationContext, work: Callable, principal: auth.Principal) -> None:
        metrics.operations_running.labels(self.service, ctx.kind).inc()
        if not self._pool.submit(ctx.tenant, ctx.name, lambda: self._run(ctx, work, principal)):
            # shutdown() closed the pool between start()'s check and here: the operation ends as it would queued
            self._end_unstarted(ctx, Interrupted("interrupted: the service stopped before it started; retry the "
                                                 "request (the same request_id starts it again)"))

    def _end_unstarted(self, ctx: OperationContext, exc: UmbraError) -> None:
        """Ends an operation that never left the queue."""
        with logs.bound(operation=ctx.name, tenant=ctx.tenant):
            self._failed(ctx, exc)
            self._finish(ctx)

    def _run(self, ctx: OperationContext, work: Callable, principal: auth.Principal) -> None:
        span = tracing.tracer(__name__).start_as_current_span(
            f"operation {ctx.kind}", context=ctx.trace_parent, kind=trace.SpanKind.INTERNAL,
            attributes={"umbra.service": self.service, "umbra.operation": ctx.name, "umbra.tenant": ctx.tenant},
            record_exception=False, set_status_on_exception=False)
        with span, logs.bound(operation=ctx.name, tenant=ctx.tenant), auth.bound(principal):
            try:
                ctx.report(stage="running")
                ctx.check_cancelled()
                response = work(ctx)
                ctx._op.response.Pack(response)
                ctx.metadata.progress.stage = "done"
                log.info("operation %s done", ctx.name)
            except UmbraError as exc:
                self._failed(ctx, exc)
            except Exception:  # noqa: BLE001 - the operation must end, with a generic error
                log.exception("operation %s failed with an unexpected error", ctx.name)
                ctx._op.error.CopyFrom(status_pb2.Status(code=code_pb2.INTERNAL,
                                                         message=f"internal error (operation {ctx.name})"))
                ctx.metadata.progress.stage = "failed"
            finally:
                self._finish(ctx)

    def _failed(self, ctx: OperationContext, exc: UmbraError) -> None:
        stopped = self._stopping.is_set() and not ctx.metadata.progress.cancel_requested
        if isinstance(exc, Cancelled) and stopped:
            exc = Interrupted("interrupted: the service stopped before it finished; retry the request "
                              "(the same request_id starts it again)")  # stopping is not the caller's cancel
        ctx._op.error.CopyFrom(_error_status(exc))
        ctx.metadata.progress.stage = ("cancelled" if isinstance(exc, Cancelled) else
                                       "interrupted" if isinstance(exc, Interrupted) else "failed")
        log.info("operation %s ended: %s", ctx.name, exc.message, extra={"code": exc.code.name})

    def _finish(self, ctx: OperationContext) -> None:
        ctx._op.done = True
        ctx.metadata.progress.end_time.GetCurrentTime()
        self._save(ctx._op, ctx.metadata)
        with self._lock:
            self._running.pop(ctx.name, None)
        self._count_end(ctx)

    def _count_end(self, ctx: OperationContext) -> None:
        """The operation's last metrics: its last stage's time, its end state, and one fewer running; its span's
        status."""
        stage, since = ctx._stage
        if stage and stage not in ENDED:
            metrics.stage_seconds.labels(self.service, ctx.kind, _stage_label(stage)).observe(time.monotonic() - since)
        state = ctx.metadata.progress.stage if ctx.metadata.progress.stage in ENDED else "failed"
        metrics.operations_ended.labels(self.service, ctx.kind, state).inc()
        metrics.operations_running.labels(self.service, ctx.kind).dec()
        span = trace.get_current_span()
        span.set_attribute("umbra.state", state)
        if state != "done":
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{state}: {ctx._op.error.message}"[:200]))

    def _save(self, op: lro.Operation, metadata: message.Message) -> None:
        metadata.progress.update_time.GetCurrentTime()
        op.metadata.Pack(metadata)
        self.store.save(op)
        with self._changed:
            self._changed.notify_all()

    # -- the Operations methods -------------------------------------------------------------------------------

    def get(self, name: str, tenant: str) -> Record:
        names.operation(name)
        record = self.store.get(name)
        if record is None or record.tenant != tenant:  # another tenant's operation does not exist for you
            raise NotFound("operation", name)
        return record

    def cancel(self, name: str, tenant: str) -> None:
        """Asks the work to stop; it ends with CANCELLED at its next check. A queued operation leaves its queue and
        ends CANCELLED at once, never started. Done operations stay as they are."""
        record = self.get(name, tenant)
        if record.operation.done:
            return
        self.store.request_cancel(name)
        with self._lock:
            ctx = self._running.get(name)
        if ctx is not None:
            ctx.metadata.progress.cancel_requested = True
            ctx.cancel_event.set()  # first: if it starts meanwhile, its first check finds it cancelled
            if self._pool.discard(name):
                self._end_unstarted(ctx, Cancelled("cancelled by request before it started"))
            else:
                ctx.save()
                self._pool.wake()  # work waiting to take a slot back (ctx.waiting()) ends without one
        log.info("operation %s: cancel requested", name)

    def delete(self, name: str, tenant: str) -> None:
        record = self.get(name, tenant)
        if not record.operation.done:
            raise FailedPrecondition(f"operation {name} is still running; cancel it first",
                                     reason="OPERATION_RUNNING")
        self.store.delete(name)

    def wait(self, name: str, tenant: str, timeout: float) -> lro.Operation:
        """The operation once done, or as it stands when `timeout` seconds pass (or the service stops)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            op = self.get(name, tenant).operation
            remaining = deadline - time.monotonic()
            if op.done or remaining <= 0 or self._stopping.is_set():
                return op
            with self._changed:
                # Wake on any change here; poll at least every second for work done by another replica.
                self._changed.wait(min(remaining, 1.0))

    # -- stopping ----------------------------------------------------------------------------------------------

    def shutdown(self, grace: float) -> None:
        """Cancels running work, waits up to `grace` seconds for it to stop, and marks what is left interrupted."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        dropped = self._pool.close()  # queued work never starts: marked interrupted below, with whatever is left
        with self._lock:
            for name in dropped:
                self._running.pop(name, None)
            running = list(self._running.values())
        for ctx in running:
            ctx.cancel_event.set()
        self._pool.wake()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.05)
        self._interrupt_unfinished("the service stopped before it finished")

    def _interrupt_unfinished(self, why: str) -> None:
        with self._lock:
            running = set(self._running)
        for record in self.store.unfinished():
            op = record.operation
            if op.name in running and not self._stopping.is_set():
                continue
            if record.cancel_requested:
                exc: UmbraError = Cancelled(f"cancelled by request; {why}")
            else:
                exc = Interrupted(f"interrupted: {why}; retry the request (the same request_id starts it again)")
            op.done = True
            op.error.CopyFrom(_error_status(exc))
            metadata = protos.unpack(op.metadata)
            if metadata is not None and hasattr(metadata, "progress"):
                metadata.progress.stage = "interrupted"
                metadata.progress.end_time.GetCurrentTime()
                metadata.progress.update_time.GetCurrentTime()
                op.metadata.Pack(metadata)
            self.store.save(op)
            log.warning("operation %s marked interrupted: %s", op.name, why)

