"""The one bootstrap every service runs: `create_server(config, spec)` builds a server a test can start on
port 0; `serve(config, spec)` runs it until SIGTERM or SIGINT and shuts down gracefully.

Every server carries, besides its own services: `google.longrunning.Operations` for its long work,
`grpc.health.v1.Health`, server reflection, OpenTelemetry's server interceptor (umbra.runtime.tracing), the runtime
interceptor (which also counts every call, umbra.runtime.metrics) and explicit message-size limits. `serve` also
serves the process's Prometheus metrics on their own port when configured.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from google.longrunning import operations_pb2_grpc, operations_proto_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import server_interceptor

from umbra.runtime import auth, logs, metrics, tracing
from umbra.runtime.config import ServiceConfig
from umbra.runtime.interceptor import RuntimeInterceptor
from umbra.runtime.operations import OperationRunner, OperationStore
from umbra.runtime.operations.servicer import OperationsServicer

log = logging.getLogger(__name__)
OPERATIONS_SERVICE = operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"].full_name


@dataclass
class Runtime:
    """What the runtime hands a service when it builds its servicers."""

    config: ServiceConfig
    operations: OperationRunner
    # Things to close when the server stops (stores a service opened), in order.
    closers: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class Registration:
    """One gRPC service on the server: its full name and how to add its servicer."""

    full_name: str
    add: Callable[[grpc.Server], None]


def registration(pb2_module, pb2_grpc_module, service: str, servicer: object) -> Registration:
    """Registration of a generated service, e.g. registration(training_service_pb2, training_service_pb2_grpc,
    "TrainingService", TrainingServicer())."""
    add = getattr(pb2_grpc_module, f"add_{service}Servicer_to_server")
    full_name = pb2_module.DESCRIPTOR.services_by_name[service].full_name
    return Registration(full_name, lambda server: add(servicer, server))


@dataclass(frozen=True)
class Built:
    """What a service's build function returns: the gRPC services it serves and who may call them."""

    registrations: list[Registration]
    authenticator: auth.Authenticator


@dataclass(frozen=True)
class ServiceSpec:
    """A service: its name and the function that builds its servicers on a runtime."""

    name: str
    build: Callable[[Runtime], Built]


class RunningService:
    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer, runtime: Runtime):
        self.server = server
        self.port = port
        self.health = health_servicer
        self.runtime = runtime
        self._stopped = threading.Event()

    def start(self) -> "RunningService":
        self.server.start()
        log.info("serving %s on port %d", self.runtime.config.service, self.port)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Graceful: health says NOT_SERVING, new calls are refused, in-flight calls get `grace` seconds to
        finish, running operations are cancelled and those still running after the grace are recorded as
        interrupted."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.runtime.config.grace_seconds if grace is None else grace
        log.info("shutting down (grace %.1fs)", grace)
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        done = self.server.stop(grace)  # refuses new calls at once; in-flight ones get the grace period
        self.runtime.operations.shutdown(grace)  # meanwhile, running work is cancelled and waited for
        done.wait(max(deadline - time.monotonic(), 0) + 1)
        for close in reversed(self.runtime.closers):
            close()
        self.runtime.operations.store.close()
        log.info("stopped")


def create_server(config: ServiceConfig, spec: ServiceSpec) -> RunningService:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = OperationStore(config.data_dir / "operations.sqlite3")
    runner = OperationRunner(store, service=config.service, max_workers=max(2, config.max_workers // 4))
    runtime = Runtime(config, runner)
    built = spec.build(runtime)
    runner.recover()  # after build: the service has registered how to resume its operations
    registrations = built.registrations
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        # OpenTelemetry's first, so that each call's span (its parent from the caller's metadata) is current while the
        # runtime interceptor and the servicer run.
        interceptors=[server_interceptor(tracer_provider=tracing.provider(config.service),
                                         filter_=tracing.untraced_calls()),
                      RuntimeInterceptor(built.authenticator, config)],
        # Calls running plus calls waiting for a thread; grpc refuses more with RESOURCE_EXHAUSTED at once.
        maximum_concurrent_rpcs=config.max_workers + config.max_queued_calls,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    for registration in registrations:
        registration.add(server)
    operations_pb2_grpc.add_OperationsServicer_to_server(
        OperationsServicer(runtime.operations, config.max_wait_seconds), server)

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.full_name for r in registrations] + [OPERATIONS_SERVICE]
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    return RunningService(server, port, health_servicer, runtime)


def serve(config: ServiceConfig, spec: ServiceSpec) -> int:
    """Runs a service until SIGTERM or SIGINT, then stops it gracefully. Returns the exit status. Raises
    metrics.MetricsPortTaken (before anything starts) when the metrics port is in use."""
    logs.configure(config.service, config.log_level)
    log.info("starting with %s", config)  # secrets are excluded from the dataclass repr
    tracing.configure(config.service)
    if config.metrics_port:
        metrics.serve(config.metrics_port, config.host)
        log.info("metrics on http://%s:%d/metrics", config.host, config.metrics_port)
    service = create_server(config, spec).start()
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
    service.stop()
    tracing.shutdown()  # sends what is batched
    return 0
