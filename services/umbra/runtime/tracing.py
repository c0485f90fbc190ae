"""OpenTelemetry traces: one trace follows a call from the coordinator through each worker's operation and its
calls to S3 and to the inference server. docs/operations.md lists the spans and shows one trace.

    tracing.configure("anonymizer")          # in `umbra serve`: the process's tracer provider and instrumentation
    tracing.add_exporter(InMemorySpanExporter())   # tests: every span, as it ends
    parent = tracing.current()               # hand a context to another thread (an operation's span takes it)

What makes the spans, all of it OpenTelemetry's own instrumentation:
- every gRPC server call: `opentelemetry-instrumentation-grpc`'s server interceptor (added by umbra.runtime.server,
  before the runtime interceptor, so the call's context is current while it runs); the parent comes from the
  W3C `traceparent` in the call's metadata;
- every gRPC client call (to a worker, the coordinator's ledger, Triton): its client instrumentation, which puts
  `traceparent` in the metadata it sends;
- every S3 request (minio speaks HTTP through urllib3): `opentelemetry-instrumentation-urllib3`;
- every long-running operation: a span of its own (umbra.runtime.operations.runner), child of the call that
  started it, with an event per stage.

Export: OTLP over gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with
OpenTelemetry's own variables for the rest (headers, certificates, timeout); otherwise spans are made (logs carry
their trace id) and not exported. Export runs on the batch processor's thread: a collector that cannot be reached
costs a warning and the dropped spans, never a slower or failed call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, filters
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

log = logging.getLogger(__name__)
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
WARN_EVERY_SECONDS = 60.0
_lock = threading.Lock()
_provider: TracerProvider | None = None


def untraced_calls():
    """Calls that make no span: health checks (probes, every few seconds) and server reflection."""
    return filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection")))


def provider(service: str = "") -> TracerProvider:
    """The process's tracer provider (made on first use, named `umbra-<service>`), also the global one."""
    global _provider
    with _lock:
        if _provider is None:
            _provider = TracerProvider(resource=Resource.create({"service.name": f"umbra-{service or 'process'}"}))
            trace.set_tracer_provider(_provider)
        return _provider


def tracer(name: str) -> trace.Tracer:
    return provider().get_tracer(name)


def endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The OTLP endpoint configured (OpenTelemetry's variables), or ""."""
    env = os.environ if environ is None else environ
    return next((env[name].strip() for name in ENDPOINT_VARIABLES if env.get(name, "").strip()), "")


def configure(service: str, environ: Mapping[str, str] | None = None) -> None:
    """The tracing of a serving process: its provider, the client instrumentation, and OTLP export when configured."""
    traces = provider(service)
    instrument()
    url = endpoint(environ)
    if url:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        traces.add_span_processor(BatchSpanProcessor(WarnOnFailure(OTLPSpanExporter(), url)))
        log.info("exporting traces over OTLP to %s", url)


def add_exporter(exporter: SpanExporter) -> None:
    """Sends every span, as it ends, to `exporter` too (tests: InMemorySpanExporter; stop it with its shutdown())."""
    provider().add_span_processor(SimpleSpanProcessor(exporter))


def instrument() -> None:
    """Traces this process's gRPC client calls and HTTP requests (S3); idempotent."""
    grpc_client = GrpcInstrumentorClient(filter_=untraced_calls())
    if not grpc_client.is_instrumented_by_opentelemetry:
        grpc_client.instrument(tracer_provider=provider())
    http = URLLib3Instrumentor()
    if not http.is_instrumented_by_opentelemetry:
        http.instrument(tracer_provider=provider(), url_filter=without_query)


def without_query(url: str) -> str:
    """A URL as a span records it: without its query string (a presigned URL's signature never reaches a span)."""
    return url.split("?", 1)[0]


def uninstrument() -> None:
    """Undoes instrument() (tests that instrument a shared process)."""
    for instrumentor in (GrpcInstrumentorClient(), URLLib3Instrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def shutdown() -> None:
    """Flushes what is batched (a stopping service)."""
    if _provider is not None:
        _provider.shutdown()


def current() -> otel_context.Context:
    """The current context, to continue its trace on another thread."""
    return otel_context.get_current()


class WarnOnFailure(SpanExporter):
    """An exporter that says, in one warning a minute at most, when its spans could not be delivered (and were
    dropped), instead of failing anything."""

    def __init__(self, inner: SpanExporter, where: str):
        self._inner = inner
        self._where = where
        self._warned = 0.0
        self._dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter must never take the service down
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped += len(spans)
            now = time.monotonic()
            if now - self._warned >= WARN_EVERY_SECONDS:
                self._warned = now
                log.warning("traces: the OTLP endpoint %s could not be reached; %d spans dropped so far",
                            self._where, self._dropped)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
