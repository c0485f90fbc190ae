"""Prometheus metrics of a service process, served by prometheus_client on its own HTTP port (`UMBRA_METRICS_PORT`,
`/metrics`; 0 turns it off). docs/operations.md lists every metric.

    metrics.serve(9464)                       # in `umbra serve`; refuses a taken port in one line (MetricsPortTaken)
    metrics.rpc_started(method, grpc_type)    # the interceptor
    metrics.images("anonymizer", "AnonymizeDataset", 64)

The gRPC server metrics carry the names and labels of grpc-ecosystem's interceptors (go-grpc-prometheus,
py-grpc-prometheus), so their dashboards and alerts work unchanged: `grpc_server_started_total`,
`grpc_server_handled_total`, `grpc_server_handling_seconds`, `grpc_server_msg_received_total`,
`grpc_server_msg_sent_total`, labelled `grpc_type`, `grpc_service`, `grpc_method` (and `grpc_code`). Umbra's own
start with `umbra_`.

A tenant is a label only on the privacy metrics, and only for the first `MAX_TENANT_LABELS` tenants a process sees
(the rest count under `tenant="other"`): tenants are made by the operator, so the series stay few and bounded.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

MAX_TENANT_LABELS = 200
OTHER_TENANTS = "other"
# Seconds: calls take milliseconds to tens of seconds (a long poll waits up to a minute).
_RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Seconds: a stage lasts from a second (a preview) to hours (a generator's DP training).
_STAGE_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)
_GRPC = ("grpc_type", "grpc_service", "grpc_method")

grpc_started = Counter("grpc_server_started_total", "Total number of RPCs started on the server.", _GRPC)
grpc_handled = Counter("grpc_server_handled_total",
                       "Total number of RPCs completed on the server, regardless of success or failure.",
                       (*_GRPC, "grpc_code"))
grpc_seconds = Histogram("grpc_server_handling_seconds",
                         "Histogram of response latency (seconds) of gRPC that had been application-level handled "
                         "by the server.", _GRPC, buckets=_RPC_BUCKETS)
grpc_received = Counter("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.",
                        _GRPC)
grpc_sent = Counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", _GRPC)

operations_running = Gauge("umbra_operations_running", "Long-running operations running now (queued ones included).",
                           ("service", "kind"))
operations_ended = Counter("umbra_operations_total",
                           "Long-running operations ended, by state: done, failed, cancelled or interrupted.",
                           ("service", "kind", "state"))
stage_seconds = Histogram("umbra_stage_seconds", "How long an operation's stages lasted (its progress.stage).",
                          ("service", "kind", "stage"), buckets=_STAGE_BUCKETS)
images_processed = Counter("umbra_images_processed_total",
                           "Images an operation processed (anonymized, matched, trained on for an epoch...).",
                           ("service", "kind"))
privacy_refusals = Counter("umbra_privacy_refusals_total",
                           "Charges the privacy ledger refused (PRIVACY_BUDGET_EXHAUSTED): the work would have passed "
                           "the tenant's budget or the request's limit.", ("tenant",))
epsilon_charged = Counter("umbra_privacy_epsilon_charged_total",
                          "Sum of the ε of the charges the privacy ledger committed (each charge's own ε; what a "
                          "tenant has spent is their composition, which the ledger's balance gives).", ("tenant",))
job_rounds = Counter("umbra_job_rounds_total", "Protection job rounds whose previews were made.", ("review",))
job_answers = Counter("umbra_job_answers_total", "Answers to protection job rounds: accept, more or less privacy.",
                      ("answer",))

_tenants: set[str] = set()
_tenants_lock = threading.Lock()


class MetricsPortTaken(OSError):
    """The metrics port is in use; the service does not start."""


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serves /metrics on `port` from a daemon thread; raises MetricsPortTaken (one line) when the port is taken."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise MetricsPortTaken(f"UMBRA_METRICS_PORT: port {port} on {host} cannot be used for metrics "
                               f"({exc.strerror or exc}); choose a free one, or 0 to serve none") from None


def tenant_label(tenant: str) -> str:
    """`tenant`, or "other" once MAX_TENANT_LABELS other tenants have a label in this process."""
    with _tenants_lock:
        if tenant in _tenants:
            return tenant
        if len(_tenants) < MAX_TENANT_LABELS:
            _tenants.add(tenant)
            return tenant
    return OTHER_TENANTS


def split_method(method: str) -> tuple[str, str]:
    """"/pkg.Service/Method" -> ("pkg.Service", "Method")."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """grpc-ecosystem's `grpc_type`: unary, client_stream, server_stream or bidi_stream."""
    if request_streaming and response_streaming:
        return "bidi_stream"
    if request_streaming:
        return "client_stream"
    return "server_stream" if response_streaming else "unary"


def images(service: str, kind: str, count: int) -> None:
    if count > 0:
        images_processed.labels(service, kind).inc(count)


def privacy_refused(tenant: str) -> None:
    privacy_refusals.labels(tenant_label(tenant)).inc()


def privacy_charged(tenant: str, epsilon: float) -> None:
    if epsilon > 0:
        epsilon_charged.labels(tenant_label(tenant)).inc(epsilon)
