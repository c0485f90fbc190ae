"""A small service on the shared runtime, for the tests of the runtime itself (lifecycle, operations,
retries, error mapping). No Umbra RPC does long work yet, so this one does: it sleeps.

It is the same bootstrap every Umbra service runs (`create_server` / `serve`), with a test servicer:

    /umbra.test.v1.Sleeper/Sleep   Duration -> Empty      sleeps in the call (an in-flight call to SIGTERM)
    /umbra.test.v1.Sleeper/Start   Duration -> Operation  an operation that sleeps, reporting progress
    /umbra.test.v1.Sleeper/Flaky   Empty -> Empty         UNAVAILABLE the first `flaky_failures` times
    /umbra.test.v1.Sleeper/Fail    Empty -> Empty         raises what `failure` says

Run as a script (`python tests/service/sleeper.py`) it serves on UMBRA_TRAINING_PORT until SIGTERM.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

import grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import duration_pb2, empty_pb2

from umbra.runtime import auth
from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.config import ServiceConfig
from umbra.runtime.errors import InvalidInput, Unavailable
from umbra.runtime.server import Built, Registration, Runtime, ServiceSpec, serve
from umbra.training.v1 import training_service_pb2

SERVICE = "umbra.test.v1.Sleeper"


class Sleeper:
    def __init__(self, runtime: Runtime, flaky_failures: int = 2):
        self.runtime = runtime
        self.calls: dict[str, int] = {}
        self.flaky_failures = flaky_failures
        self.failure: Exception = RuntimeError("boom")
        self._lock = threading.Lock()

    def _count(self, name: str) -> int:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self.calls[name]

    def sleep(self, request: duration_pb2.Duration, context) -> empty_pb2.Empty:
        self._count("Sleep")
        time.sleep(request.ToTimedelta().total_seconds())
        return empty_pb2.Empty()

    def start(self, request: duration_pb2.Duration, context) -> lro.Operation:
        self._count("Start")
        seconds = request.ToTimedelta().total_seconds()
        if seconds < 0:
            raise InvalidInput("seconds", "must not be negative")
        ticks = max(int(seconds * 10), 1)

        def work(ctx):
            ctx.report(stage="sleeping", done=0, total=ticks, unit="ticks")
            for tick in range(1, ticks + 1):
                ctx.check_cancelled()
                time.sleep(seconds / ticks)
                ctx.report(done=tick)
            return request

        return self.runtime.operations.start(kind="Sleep", tenant=auth.current().tenant,
                                             metadata=training_service_pb2.EvaluateMetadata(), work=work)

    def flaky(self, request, context) -> empty_pb2.Empty:
        if self._count("Flaky") <= self.flaky_failures:
            raise Unavailable("not yet")
        return empty_pb2.Empty()

    def fail(self, request, context) -> empty_pb2.Empty:
        self._count("Fail")
        raise self.failure

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, request_type, response_type):
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request_type.FromString,
                                                       response_serializer=response_type.SerializeToString)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Sleep": unary(self.sleep, duration_pb2.Duration, empty_pb2.Empty),
            "Start": unary(self.start, duration_pb2.Duration, lro.Operation),
            "Flaky": unary(self.flaky, empty_pb2.Empty, empty_pb2.Empty),
            "Fail": unary(self.fail, empty_pb2.Empty, empty_pb2.Empty),
        })


def sleeper_spec(holder: list | None = None) -> ServiceSpec:
    """The spec; `holder` receives the Sleeper instance so in-process tests can look at it."""

    def build(runtime: Runtime) -> Built:
        sleeper = Sleeper(runtime)
        if holder is not None:
            holder.append(sleeper)
        return Built([Registration(SERVICE, lambda server: server.add_generic_rpc_handlers((sleeper.handler(),)))],
                     ServiceAuthenticator(runtime.config.service_token))

    return ServiceSpec("sleeper", build)


def call(channel: grpc.Channel, method: str, request, response_type, **kwargs):
    return channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=type(request).SerializeToString,
                               response_deserializer=response_type.FromString)(request, **kwargs)


if __name__ == "__main__":
    config = dataclasses.replace(ServiceConfig.from_env("training", os.environ), service="sleeper")
    sys.exit(serve(config, sleeper_spec()))
