"""The Python SDK: one `Client` per coordinator, with a typed stub per service.

    from umbra.client import Client
    client = Client()                      # endpoint and API key from the environment or config file
    op = client.operations.wait("operations/...", progress=True)

Every stub call may raise grpc.RpcError; wrap it with `umbra.client.operations.call` (or use the helpers
here) to get an `UmbraRpcError` with the ErrorInfo reason and the offending field.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient, call
from umbra.client.settings import ClientSettings
from umbra.coordinator.v1 import (
    dataset_service_pb2_grpc,
    job_service_pb2_grpc,
    ledger_service_pb2_grpc,
    model_service_pb2_grpc,
    tenant_service_pb2_grpc,
)


class Client:
    def __init__(self, endpoint: str | None = None, api_key: str | None = None, *, timeout: float = 30.0):
        settings = ClientSettings.load()
        self.endpoint = endpoint or settings.endpoint
        self.channel = open_channel(self.endpoint, api_key if api_key is not None else settings.api_key)
        self.timeout = timeout
        self.tenants = tenant_service_pb2_grpc.TenantServiceStub(self.channel)
        self.datasets = dataset_service_pb2_grpc.DatasetServiceStub(self.channel)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.ledger = ledger_service_pb2_grpc.LedgerServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.operations = OperationsClient(self.channel, timeout)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, ... of the whole server or one of its services."""
        response = call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def health_of(target: str, timeout: float = 2.0) -> str:
    """Health of the server at `target` (no credential needed), or UNREACHABLE."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
