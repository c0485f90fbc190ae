"""JSON logs, one object per line, with the RPC id, method and tenant of the current call on every line, and the
trace and span id of the current span (umbra.runtime.tracing), so a line leads to its trace.

The call context lives in contextvars set by the interceptor (and by the operation runner for background
work), so `logging.getLogger(__name__).info("...", arg)` anywhere picks it up. Never log a secret or an image.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

from opentelemetry import trace

rpc_id: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_id", default="")
rpc_method: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_method", default="")
tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")
operation: contextvars.ContextVar[str] = contextvars.ContextVar("operation", default="")

_CONTEXT = {"rpc_id": rpc_id, "method": rpc_method, "tenant": tenant, "operation": operation}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, var in _CONTEXT.items():
            value = var.get()
            if value:
                entry[key] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # the trace this line belongs to (umbra.runtime.tracing)
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        for key in ("code", "duration_ms", "peer"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(service: str, level: str = "INFO", stream=None) -> None:
    """Routes every logger to one JSON handler. Called once, by the process that serves."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextlib.contextmanager
def bound(**values: str) -> Iterator[None]:
    """Sets call-context fields (rpc_id, method, tenant, operation) for the duration of a block."""
    tokens = [(_CONTEXT[k], _CONTEXT[k].set(v)) for k, v in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
