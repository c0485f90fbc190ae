"""The one server interceptor. For every call it

1. takes (or makes) the RPC id and sends it back as `x-request-id` in the trailers (not in headers: a call
   whose headers were sent is committed and gRPC's client-side retries would no longer apply);
2. authenticates the caller, so an unauthenticated call is answered UNAUTHENTICATED and never reaches a servicer;
3. binds RPC id, method and tenant to the logging context;
4. turns a request that is not valid protobuf into INVALID_ARGUMENT (grpc would say INTERNAL);
5. maps the `UmbraError` hierarchy to status codes with a `google.rpc.ErrorInfo` (and a `BadRequest` naming
   the field for `InvalidInput`); anything else becomes INTERNAL with a generic message, logged once;
6. bounds what one call and one tenant may hold, so that no caller can take every RPC thread (`Admission`,
   `TimedRequests`): calls and client streams in flight per tenant, client streams in flight in all, and an
   idle and a total timeout on every client stream (grpc's sync server has neither; a stream that sends one
   message and then nothing would hold its thread forever).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from umbra.runtime import auth, logs, metrics
from umbra.runtime.config import ServiceConfig
from umbra.runtime.errors import DOMAIN, Cancelled, InvalidInput, ResourceExhausted, StreamTimeout, UmbraError

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # matched whole, ASCII only


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the behaviour can answer INVALID_ARGUMENT."""

    def __init__(self, type_name: str):
        self.type_name = type_name


# The status travels in a trailer, and gRPC refuses trailers past a few KiB (the caller then sees only
# "RESOURCE_EXHAUSTED: Stream removed"): what an error echoes of a request is cut to these lengths.
MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 200


def clip(text: str, limit: int) -> str:
    """`text`, or its start and how long it was when it is longer than `limit` characters."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def to_status(exc: UmbraError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=clip(exc.reason, MAX_DETAIL_CHARS), domain=DOMAIN,
                                       metadata={clip(k, MAX_DETAIL_CHARS): clip(str(v), MAX_DETAIL_CHARS)
                                                 for k, v in list(exc.metadata.items())[:32]})
    details = [_pack(info)]
    if isinstance(exc, InvalidInput):
        violation = error_details_pb2.BadRequest.FieldViolation(field=clip(exc.field, MAX_DETAIL_CHARS),
                                                                description=clip(exc.problem, MAX_MESSAGE_CHARS))
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(exc, ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=exc.retry_after))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=exc.code.value[0], message=clip(exc.message, MAX_MESSAGE_CHARS), details=details)
    return rpc_status.to_status(status)


def _pack(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def _internal_status(rpc_id: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN, metadata={"rpc_id": rpc_id})
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (rpc id {rpc_id})",
                               details=[_pack(info)])
    return rpc_status.to_status(status)


def _with_rpc_id(status: grpc.Status, rpc_id: str) -> grpc.Status:
    # abort_with_status replaces the trailers, so the RPC id goes in with the status details.
    return status._replace(trailing_metadata=tuple(status.trailing_metadata) + ((REQUEST_ID_HEADER, rpc_id),))


def _safe_deserializer(deserialize: Callable | None, type_name: str) -> Callable | None:
    if deserialize is None:
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except message.DecodeError:
            return _Malformed(type_name)

    return parse


def _check_parsed(request):
    if isinstance(request, _Malformed):
        raise InvalidInput("request", f"is not a valid {request.type_name} message")
    return request


class Admission:
    """Counts the calls and client streams in flight and refuses, RESOURCE_EXHAUSTED, those over a limit:

    - per tenant (callers with a tenant API key): `tenant_max_calls` calls and `tenant_max_streams` client
      streams at once, so one tenant cannot take the RPC threads that other tenants need;
    - in all: `max_streams` client streams at once, whoever calls, so a part of the threads always stays for
      unary calls and health checks (a client stream holds its thread while it waits for the client).

    Not capped per tenant: health checks and reflection (no credential; probes must always be answered), the
    admin key (the operator), and Umbra's own service credential (internal calls; their number is bounded by the
    callers' own operation workers, and refusing them would fail a tenant's running work half-way). Their
    client streams (reflection's included) still count towards `max_streams`.
    """

    def __init__(self, config: ServiceConfig):
        self._config = config
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        self._all_streams = 0

    def admit(self, principal: auth.Principal, *, streaming: bool) -> Callable[[], None]:
        """Takes a slot for the call, or raises ResourceExhausted. Returns the (idempotent) release."""
        config = self._config
        tenant = principal.tenant if principal.kind == "tenant" else ""
        with self._lock:
            if tenant and self._calls.get(tenant, 0) >= config.tenant_max_calls:
                raise ResourceExhausted(
                    f"too many calls at once: tenant {tenant!r} already has {config.tenant_max_calls} in flight, "
                    "the most allowed (UMBRA_TENANT_MAX_CALLS); retry when one has finished",
                    reason="TOO_MANY_CALLS", metadata={"limit": "tenant_max_calls",
                                                       "max": str(config.tenant_max_calls)})
            if streaming and tenant and self._streams.get(tenant, 0) >= config.tenant_max_streams:
                raise ResourceExhausted(
                    f"too many streams at once: tenant {tenant!r} already has {config.tenant_max_streams} client "
                    "streams open, the most allowed (UMBRA_TENANT_MAX_STREAMS); retry when one has finished",
                    reason="TOO_MANY_STREAMS", metadata={"limit": "tenant_max_streams",
                                                         "max": str(config.tenant_max_streams)})
            if streaming and self._all_streams >= config.max_streams:
                raise ResourceExhausted(
                    f"too many streams at once: the server already has {config.max_streams} client streams open, "
                    "the most it takes (UMBRA_MAX_STREAMS); retry later",
                    reason="TOO_MANY_STREAMS", metadata={"limit": "max_streams", "max": str(config.max_streams)})
            if tenant:
                self._calls[tenant] = self._calls.get(tenant, 0) + 1
                if streaming:
                    self._streams[tenant] = self._streams.get(tenant, 0) + 1
            if streaming:
                self._all_streams += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                if tenant:
                    _decrement(self._calls, tenant)
                    if streaming:
                        _decrement(self._streams, tenant)
                if streaming:
                    self._all_streams -= 1

        return release


def _decrement(counts: dict[str, int], key: str) -> None:
    counts[key] -= 1
    if not counts[key]:
        del counts[key]


class TimedRequests:
    """The request iterator of a client stream, with an idle and a total timeout.

    grpc's `next()` on a request iterator blocks until the client sends, half-closes or the call ends; it takes
    no timeout. So a helper thread makes that call, one message at a time and only when the handler asks (no
    read-ahead: flow control stays with grpc), while the handler's thread waits for it with a timeout. On a
    timeout the handler gets StreamTimeout, its call ends with that status, and ending the call wakes the helper
    (grpc completes the pending receive), which then exits too.
    """

    def __init__(self, requests: Iterator, *, idle_seconds: float, max_seconds: float, started: float):
        self._requests = requests
        self._idle = idle_seconds
        self._max = max_seconds
        self._deadline = started + max_seconds
        self._asked = threading.Semaphore(0)
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._closed = False

    def __iter__(self) -> "TimedRequests":
        return self

    def __next__(self):
        if self._closed:
            raise StopIteration
        if self._reader is None:
            self._reader = threading.Thread(target=self._read, name="rpc-stream-reader", daemon=True)
            self._reader.start()
        self._asked.release()
        remaining = self._deadline - time.monotonic()
        try:
            kind, value = self._answers.get(timeout=max(min(self._idle, remaining), 0))
        except queue.Empty:
            self.close()
            if remaining <= self._idle:
                raise StreamTimeout(f"the stream was ended after {self._max:g} s, the longest a client stream may "
                                    "last (UMBRA_STREAM_MAX_SECONDS)", reason="STREAM_TOO_LONG",
                                    metadata={"limit_seconds": f"{self._max:g}"}) from None
            raise StreamTimeout(f"the stream was ended after {self._idle:g} s without a message "
                                "(UMBRA_STREAM_IDLE_SECONDS)", reason="STREAM_IDLE",
                                metadata={"limit_seconds": f"{self._idle:g}"}) from None
        if kind == "message":
            return value
        self._closed = True
        if kind == "end":
            raise StopIteration
        raise value

    def close(self) -> None:
        """No more reads: lets the helper thread exit (at once, or when grpc's pending read returns)."""
        self._closed = True
        self._asked.release()

    def _read(self) -> None:
        while True:
            self._asked.acquire()
            if self._closed:
                return
            try:
                answer = ("message", next(self._requests))
            except StopIteration:
                answer = ("end", None)
            except BaseException as exc:  # noqa: BLE001 - handed to the handler's thread (grpc.RpcError on cancel)
                answer = ("error", exc)
            self._answers.put(answer)
            if answer[0] != "message":
                return


class RuntimeInterceptor(grpc.ServerInterceptor):
    def __init__(self, authenticator: auth.Authenticator, config: ServiceConfig):
        self._authenticator = authenticator
        self._config = config
        self.admission = Admission(config)

    @contextlib.contextmanager
    def _bounded(self, principal: auth.Principal, context, started: float, requests: Iterator | None = None):
        """Admits the call (or raises ResourceExhausted) and holds its slot until it ends; for a client stream,
        yields its requests with the idle and total timeouts."""
        release = self.admission.admit(principal, streaming=requests is not None)
        context.add_callback(release)  # also when grpc ends the call without the handler returning
        timed = None
        if requests is not None:
            timed = TimedRequests(requests, idle_seconds=self._config.stream_idle_seconds,
                                  max_seconds=self._config.stream_max_seconds, started=started)
        try:
            yield timed
        finally:
            if timed is not None:
                timed.close()
            release()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        metadata = {k: v for k, v in handler_call_details.invocation_metadata if isinstance(v, str)}
        exempt = method.startswith(auth.EXEMPT_PREFIXES)
        type_name = method.rsplit("/", 1)[-1] + " request"

        def begin(context, labels: tuple[str, str, str]) -> str:
            metrics.grpc_started.labels(*labels).inc()
            rpc_id = metadata.get(REQUEST_ID_HEADER, "")
            if not _REQUEST_ID.fullmatch(rpc_id):
                rpc_id = uuid.uuid4().hex
            context.set_trailing_metadata(((REQUEST_ID_HEADER, rpc_id),))
            return rpc_id

        def authenticate(context, rpc_id: str, started: float, labels: tuple[str, str, str]) -> auth.Principal:
            try:
                return auth.ANONYMOUS if exempt else self._authenticator.authenticate(metadata, method)
            except UmbraError as exc:
                self._finish(context, rpc_id, exc, started, labels)  # aborts the call
                raise

        def call(behavior, request, context, labels: tuple[str, str, str], client_stream: bool = False):
            rpc_id, started = begin(context, labels), time.monotonic()
            with logs.bound(rpc_id=rpc_id, method=method):
                principal = authenticate(context, rpc_id, started, labels)
                with logs.bound(tenant=principal.tenant), auth.bound(principal):
                    _mark_span(self._config.service, principal.tenant)
                    if not client_stream:
                        metrics.grpc_received.labels(*labels).inc()
                    try:
                        with self._bounded(principal, context, started, request if client_stream else None) as timed:
                            response = behavior(_counted(timed, labels) if client_stream else request, context)
                    except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
                        self._finish(context, rpc_id, exc, started, labels)
                    self._log_done(context, started, labels, quiet=exempt)
                    metrics.grpc_sent.labels(*labels).inc()
                    return response

        def call_streaming(behavior, request, context, labels: tuple[str, str, str], client_stream: bool = False):
            # A generator: everything, authentication included, runs while grpc iterates the responses.
            rpc_id, started = begin(context, labels), time.monotonic()
            with logs.bound(rpc_id=rpc_id, method=method):
                principal = authenticate(context, rpc_id, started, labels)
                with logs.bound(tenant=principal.tenant), auth.bound(principal):
                    _mark_span(self._config.service, principal.tenant)
                    if not client_stream:
                        metrics.grpc_received.labels(*labels).inc()
                    try:
                        with self._bounded(principal, context, started, request if client_stream else None) as timed:
                            for response in behavior(_counted(timed, labels) if client_stream else request, context):
                                metrics.grpc_sent.labels(*labels).inc()
                                yield response
                    except Exception as exc:  # noqa: BLE001
                        self._finish(context, rpc_id, exc, started, labels)
                    self._log_done(context, started, labels, quiet=exempt)

        deserializer = _safe_deserializer(handler.request_deserializer, type_name)
        labels = (metrics.grpc_type(handler.request_streaming, handler.response_streaming),
                  *metrics.split_method(method))
        if handler.unary_unary:
            inner = handler.unary_unary
            return handler._replace(request_deserializer=deserializer, unary_unary=lambda req, ctx: call(
                lambda r, c: inner(_check_parsed(r), c), req, ctx, labels))
        if handler.unary_stream:
            inner = handler.unary_stream
            return handler._replace(request_deserializer=deserializer, unary_stream=lambda req, ctx: call_streaming(
                lambda r, c: inner(_check_parsed(r), c), req, ctx, labels))
        if handler.stream_unary:
            inner = handler.stream_unary
            return handler._replace(request_deserializer=deserializer, stream_unary=lambda it, ctx: call(
                lambda r, c: inner(map(_check_parsed, r), c), it, ctx, labels, client_stream=True))
        inner = handler.stream_stream
        return handler._replace(request_deserializer=deserializer, stream_stream=lambda it, ctx: call_streaming(
            lambda r, c: inner(map(_check_parsed, r), c), it, ctx, labels, client_stream=True))

    def _finish(self, context, rpc_id: str, exc: Exception, started: float, labels: tuple[str, str, str]) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code not in (None, grpc.StatusCode.OK):
            # The behaviour aborted the call itself (library servicers do this): keep its status.
            self._log_done(context, started, labels)
            raise exc
        elapsed = round((time.monotonic() - started) * 1000, 1)
        if isinstance(exc, grpc.RpcError):  # reading the client's stream failed: it cancelled or went away
            exc = Cancelled("the client cancelled the call or went away")
        if isinstance(exc, UmbraError):
            log.info("rpc failed: %s", exc.message, extra={"code": exc.code.name, "duration_ms": elapsed})
            _handled(labels, exc.code, started, exc.message)
            context.abort_with_status(_with_rpc_id(to_status(exc), rpc_id))
        log.error("rpc failed with an unexpected error", exc_info=exc,
                  extra={"code": "INTERNAL", "duration_ms": elapsed})
        _handled(labels, grpc.StatusCode.INTERNAL, started, "internal error")
        context.abort_with_status(_with_rpc_id(_internal_status(rpc_id), rpc_id))

    @staticmethod
    def _log_done(context, started: float, labels: tuple[str, str, str], quiet: bool = False) -> None:
        """One line per call; health checks and reflection (probes, tools) only at DEBUG."""
        code = (context.code() if hasattr(context, "code") else None) or grpc.StatusCode.OK
        elapsed = round((time.monotonic() - started) * 1000, 1)
        details = context.details() if code != grpc.StatusCode.OK and hasattr(context, "details") else ""
        _handled(labels, code, started, details.decode(errors="replace") if isinstance(details, bytes)
                 else str(details or ""))
        log.log(logging.DEBUG if quiet else logging.INFO, "rpc done", extra={"code": code.name, "duration_ms": elapsed})


def _handled(labels: tuple[str, str, str], code: grpc.StatusCode, started: float, message: str) -> None:
    """Counts a finished call (grpc-ecosystem's metrics) and, when it failed, marks its span."""
    metrics.grpc_handled.labels(*labels, code.name).inc()
    metrics.grpc_seconds.labels(*labels).observe(time.monotonic() - started)
    if code != grpc.StatusCode.OK:
        span = trace.get_current_span()
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {message}"[:200]))


def _mark_span(service: str, tenant: str) -> None:
    """The call's span says which of Umbra's services answered it, and for which tenant."""
    span = trace.get_current_span()
    span.set_attribute("umbra.service", service)
    if tenant:
        span.set_attribute("umbra.tenant", tenant)


def _counted(requests, labels: tuple[str, str, str]):
    """A client stream's requests, each counted as received."""
    for request in requests:
        metrics.grpc_received.labels(*labels).inc()
        yield request
