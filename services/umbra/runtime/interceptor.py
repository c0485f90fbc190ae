"""The one server interceptor. For every call it

1. takes (or makes) the RPC id and sends it back as `x-request-id` in the trailers (not in headers: a call
   whose headers were sent is committed and gRPC's client-side retries would no longer apply);
2. authenticates the caller, so an unauthenticated call is answered UNAUTHENTICATED and never reaches a servicer;
3. binds RPC id, method and tenant to the logging context;
4. turns a request that is not valid protobuf into INVALID_ARGUMENT (grpc would say INTERNAL);
5. maps the `UmbraError` hierarchy to status codes with a `google.rpc.ErrorInfo` (and a `BadRequest` naming
   the field for `InvalidInput`); anything else becomes INTERNAL with a generic message, logged once.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

import grpc
from google.protobuf import any_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from umbra.runtime import auth, logs
from umbra.runtime.errors import DOMAIN, InvalidInput, UmbraError

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the behaviour can answer INVALID_ARGUMENT."""

    def __init__(self, type_name: str):
        self.type_name = type_name


def to_status(exc: UmbraError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata)
    details = [_pack(info)]
    if isinstance(exc, InvalidInput):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.problem)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message, details=details)
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


class RuntimeInterceptor(grpc.ServerInterceptor):
    def __init__(self, authenticator: auth.Authenticator):
        self._authenticator = authenticator

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        metadata = {k: v for k, v in handler_call_details.invocation_metadata if isinstance(v, str)}
        exempt = method.startswith(auth.EXEMPT_PREFIXES)
        type_name = method.rsplit("/", 1)[-1] + " request"

        def begin(context) -> str:
            rpc_id = metadata.get(REQUEST_ID_HEADER, "")
            if not _REQUEST_ID.match(rpc_id):
                rpc_id = uuid.uuid4().hex
            context.set_trailing_metadata(((REQUEST_ID_HEADER, rpc_id),))
            return rpc_id

        def authenticate(context, rpc_id: str, started: float) -> auth.Principal:
            try:
                return auth.ANONYMOUS if exempt else self._authenticator.authenticate(metadata, method)
            except UmbraError as exc:
                self._finish(context, rpc_id, exc, started)  # aborts the call
                raise

        def call(behavior, request, context):
            rpc_id, started = begin(context), time.monotonic()
            with logs.bound(rpc_id=rpc_id, method=method):
                principal = authenticate(context, rpc_id, started)
                with logs.bound(tenant=principal.tenant), auth.bound(principal):
                    try:
                        response = behavior(request, context)
                    except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
                        self._finish(context, rpc_id, exc, started)
                    self._log_done(context, started, quiet=exempt)
                    return response

        def call_streaming(behavior, request, context):
            # A generator: everything, authentication included, runs while grpc iterates the responses.
            rpc_id, started = begin(context), time.monotonic()
            with logs.bound(rpc_id=rpc_id, method=method):
                principal = authenticate(context, rpc_id, started)
                with logs.bound(tenant=principal.tenant), auth.bound(principal):
                    try:
                        yield from behavior(request, context)
                    except Exception as exc:  # noqa: BLE001
                        self._finish(context, rpc_id, exc, started)
                    self._log_done(context, started, quiet=exempt)

        deserializer = _safe_deserializer(handler.request_deserializer, type_name)
        if handler.unary_unary:
            inner = handler.unary_unary
            return handler._replace(request_deserializer=deserializer, unary_unary=lambda req, ctx: call(
                lambda r, c: inner(_check_parsed(r), c), req, ctx))
        if handler.unary_stream:
            inner = handler.unary_stream
            return handler._replace(request_deserializer=deserializer, unary_stream=lambda req, ctx: call_streaming(
                lambda r, c: inner(_check_parsed(r), c), req, ctx))
        if handler.stream_unary:
            inner = handler.stream_unary
            return handler._replace(request_deserializer=deserializer, stream_unary=lambda it, ctx: call(
                lambda r, c: inner(map(_check_parsed, r), c), it, ctx))
        inner = handler.stream_stream
        return handler._replace(request_deserializer=deserializer, stream_stream=lambda it, ctx: call_streaming(
            lambda r, c: inner(map(_check_parsed, r), c), it, ctx))

    def _finish(self, context, rpc_id: str, exc: Exception, started: float) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code not in (None, grpc.StatusCode.OK):
            # The behaviour aborted the call itself (library servicers do this): keep its status.
            self._log_done(context, started)
            raise exc
        elapsed = round((time.monotonic() - started) * 1000, 1)
        if isinstance(exc, UmbraError):
            log.info("rpc failed: %s", exc.message, extra={"code": exc.code.name, "duration_ms": elapsed})
            context.abort_with_status(_with_rpc_id(to_status(exc), rpc_id))
        log.error("rpc failed with an unexpected error", exc_info=exc,
                  extra={"code": "INTERNAL", "duration_ms": elapsed})
        context.abort_with_status(_with_rpc_id(_internal_status(rpc_id), rpc_id))

    @staticmethod
    def _log_done(context, started: float, quiet: bool = False) -> None:
        """One line per call; health checks and reflection (probes, tools) only at DEBUG."""
        code = (context.code() if hasattr(context, "code") else None) or grpc.StatusCode.OK
        elapsed = round((time.monotonic() - started) * 1000, 1)
        log.log(logging.DEBUG if quiet else logging.INFO, "rpc done", extra={"code": code.name, "duration_ms": elapsed})
