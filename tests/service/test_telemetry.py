"""Metrics and traces of real service processes (`umbra serve`), scraped and received over real sockets:

- every service serves Prometheus metrics on its own port, and grpc-ecosystem's counters move with real calls;
- a metrics port that is taken: the service says so in one line and does not start;
- traces go over OTLP to a collector (here a real OTLP/gRPC receiver in the test), and a call's span is the child
  of the caller's, whose context travelled in the call's metadata; the service's log lines carry the trace id;
- a collector that cannot be reached: the spans are dropped with a warning, and no call is slowed or failed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families

from support import ADMIN_KEY, SERVICE_TOKEN, create_tenant, free_port, serve_process
from umbra.client.channel import open_channel
from umbra.client.layout import SERVICES

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """The metrics at http://127.0.0.1:port/metrics, keyed by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def credential_for(service: str, target: str) -> tuple[str, str]:
    """(credential, tenant) for calls to `service`: a tenant's API key for the coordinator, else the service token."""
    if service == "coordinator":
        return create_tenant(target, "acme"), ""
    return SERVICE_TOKEN, "acme"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_serves_grpc_metrics_that_move_with_real_calls(service, tmp_path):
    port, metrics_port = free_port(), free_port()
    proc = serve_process(service, tmp_path, port, UMBRA_METRICS_PORT=str(metrics_port))
    try:
        before = scrape(metrics_port)
        target = f"127.0.0.1:{port}"
        credential, tenant = credential_for(service, target)
        with open_channel(target, credential, tenant=tenant) as channel:
            stub = operations_pb2_grpc.OperationsStub(channel)
            for _ in range(3):
                stub.ListOperations(operations_pb2.ListOperationsRequest(name="operations"), timeout=10)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetOperation(operations_pb2.GetOperationRequest(name="not an operation"), timeout=10)
            assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        after = scrape(metrics_port)
    finally:
        stop(proc)
    ops = dict(grpc_service="google.longrunning.Operations", grpc_type="unary")
    started = "grpc_server_started_total"
    assert value(after, started, grpc_method="ListOperations", **ops) - \
        value(before, started, grpc_method="ListOperations", **ops) == 3
    handled = "grpc_server_handled_total"
    assert value(after, handled, grpc_method="ListOperations", grpc_code="OK", **ops) == 3
    assert value(after, handled, grpc_method="GetOperation", grpc_code=refused.value.code().name, **ops) == 1
    assert value(after, "grpc_server_handling_seconds_count", grpc_method="ListOperations", **ops) == 3
    assert value(after, "grpc_server_msg_received_total", grpc_method="ListOperations", **ops) == 3
    assert value(after, "grpc_server_msg_sent_total", grpc_method="ListOperations", **ops) == 3
    # Umbra's own families are there from the start, so a dashboard finds them before the first operation.
    names = {name for name, _ in after}
    assert "grpc_server_handling_seconds_bucket" in names
    if service == "coordinator":  # the tenant's creation, by the admin
        assert value(after, handled, grpc_method="CreateTenant", grpc_code="OK") == 1


def test_a_taken_metrics_port_stops_the_service_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        env = dict(os.environ, UMBRA_HOME=str(tmp_path), UMBRA_TRAINING_PORT=str(free_port()),
                   UMBRA_SERVICE_TOKEN=SERVICE_TOKEN, UMBRA_ADMIN_KEY=ADMIN_KEY, UMBRA_METRICS_PORT=str(metrics_port))
        done = subprocess.run([sys.executable, "-m", "umbra.cli.main", "serve", "training"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("umbra serve training: UMBRA_METRICS_PORT: port ") and str(metrics_port) in last
    assert "Traceback" not in done.stderr


def test_bad_metrics_ports_are_refused_by_name(tmp_path):
    from umbra.runtime.config import ConfigError, ServiceConfig

    base = dict(UMBRA_HOME=str(tmp_path), UMBRA_SERVICE_TOKEN=SERVICE_TOKEN, UMBRA_TRAINING_PORT="50999")
    for bad, why in (("70000", "is not a port"), ("50999", "gRPC port"), ("x", "not a whole number")):
        with pytest.raises(ConfigError, match=f"UMBRA_METRICS_PORT: .*{why}"):
            ServiceConfig.from_env("training", dict(base, UMBRA_METRICS_PORT=bad))


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource in request.resource_spans:
                service = next((a.value.string_value for a in resource.resource.attributes
                                if a.key == "service.name"), "")
                for scope in resource.scope_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_collector_as_children_of_the_callers_span(tmp_path):
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port = free_port()
    proc = serve_process("training", tmp_path, port, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
                         OTEL_BSP_SCHEDULE_DELAY="100")
    # The caller's own span, made with a provider of its own: its context goes in the call's metadata.
    caller = TracerProvider().get_tracer("test")
    try:
        with caller.start_as_current_span("the caller") as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            with open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="acme") as channel:
                operations_pb2_grpc.OperationsStub(channel).ListOperations(
                    operations_pb2.ListOperationsRequest(name="operations"), metadata=tuple(carrier.items()),
                    timeout=10)
        trace_id, span_id = span.get_span_context().trace_id, span.get_span_context().span_id
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s.trace_id == trace_id.to_bytes(16, "big")
                                                      for _, s in collector.spans):
            time.sleep(0.2)
    finally:
        stop(proc)  # also flushes what is batched
        server.stop(0)
    ours = [(service, s) for service, s in collector.spans if s.trace_id == trace_id.to_bytes(16, "big")]
    assert len(ours) == 1, [s.name for _, s in collector.spans]
    service, received = ours[0]
    assert service == "umbra-training"
    assert received.name == "/google.longrunning.Operations/ListOperations"
    assert received.parent_span_id == span_id.to_bytes(8, "big")
    attributes = {a.key: a.value for a in received.attributes}
    assert attributes["umbra.service"].string_value == "training"
    assert attributes["umbra.tenant"].string_value == "acme"
    # Health checks make no spans (probes would drown the traces).
    assert not [s for _, s in collector.spans if "Health" in s.name]
    # The call's log line carries its trace id.
    lines = [json.loads(line) for log in tmp_path.glob("training-*.log") for line in log.read_text().splitlines()
             if line.startswith("{")]
    done = [line for line in lines if line.get("msg") == "rpc done" and line.get("method", "").endswith(
        "ListOperations")]
    assert done and done[0]["trace_id"] == trace.format_trace_id(trace_id)


def test_an_unreachable_collector_drops_spans_with_a_warning_and_slows_no_call(tmp_path):
    port = free_port()
    closed = free_port()  # nothing listens there
    proc = serve_process("training", tmp_path, port, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}",
                         OTEL_BSP_SCHEDULE_DELAY="50", OTEL_EXPORTER_OTLP_TIMEOUT="2")
    try:
        slowest = 0.0
        with open_channel(f"127.0.0.1:{port}", SERVICE_TOKEN, tenant="acme") as channel:
            stub = operations_pb2_grpc.OperationsStub(channel)
            deadline = time.monotonic() + 8  # past the exporter's 2 s timeout: it has given up on some batches
            calls = 0
            while time.monotonic() < deadline:
                began = time.monotonic()
                stub.ListOperations(operations_pb2.ListOperationsRequest(name="operations"), timeout=10)
                slowest = max(slowest, time.monotonic() - began)
                calls += 1
                time.sleep(0.05)
        logs = "".join(log.read_text() for log in tmp_path.glob("training-*.log"))
        warned = [json.loads(line) for line in logs.splitlines() if "could not be reached" in line]
    finally:
        stop(proc)
    assert calls > 20
    assert slowest < 1.0, f"a call took {slowest:.2f} s while the collector was unreachable"
    assert warned and warned[0]["level"] == "WARNING" and f"127.0.0.1:{closed}" in warned[0]["msg"]
    assert "spans dropped" in warned[0]["msg"]
