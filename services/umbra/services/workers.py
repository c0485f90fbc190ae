"""What the four internal worker services share: one gRPC service each, behind the service credential."""

from __future__ import annotations

from collections.abc import Callable

from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.server import Built, Runtime, registration


def worker(pb2_module, pb2_grpc_module, service: str, make_servicer: Callable[[Runtime], object]):
    """The build function of a worker serving `service` (e.g. "TrainingService")."""

    def build(runtime: Runtime) -> Built:
        return Built(
            registrations=[registration(pb2_module, pb2_grpc_module, service, make_servicer(runtime))],
            authenticator=ServiceAuthenticator(runtime.config.service_token),
        )

    return build
