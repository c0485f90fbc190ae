"""Bounded resources per call and per tenant, through real gRPC over a socket: one tenant's idle upload streams
cannot take the RPC threads that health checks and other tenants need (issue 15)."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import duration_pb2, empty_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from sleeper import call, sleeper_spec
from support import ADMIN_KEY, SERVICE_TOKEN, config_for, create_tenant, start_service, status_details
from umbra.client.channel import open_channel
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import dataset_service_pb2_grpc, tenant_service_pb2, tenant_service_pb2_grpc
from umbra.runtime.server import create_server

pytestmark = pytest.mark.timeout(60)
SHARD = "shard-000000.tar"


class Coordinator:
    """A coordinator with tenants acme and globex, and client streams that hang until the test ends."""

    def __init__(self, tmp_path, **env):
        self.served = start_service("coordinator", tmp_path, **env)
        self.target = self.served.target
        self.acme = dataset_service_pb2_grpc.DatasetServiceStub(self.served.channel())
        self.globex = dataset_service_pb2_grpc.DatasetServiceStub(
            open_channel(self.target, create_tenant(self.target, "globex")))
        self.hang = threading.Event()  # set at teardown: every hanging client stream then half-closes

    def version(self, stub, dataset: str = "big") -> str:
        stub.CreateDataset(ds.CreateDatasetRequest(dataset_id=dataset, dataset=ds.Dataset(display_name=dataset)),
                           timeout=10)
        return stub.CreateDatasetVersion(ds.CreateDatasetVersionRequest(parent=f"datasets/{dataset}", shard_count=1),
                                         timeout=10).dataset_version.name

    def one_chunk_then_nothing(self, stub, version: str) -> grpc.Future:
        def messages():
            yield ds.UploadDatasetChunkRequest(dataset_version=version, shard=SHARD, offset=0, data=b"x")
            self.hang.wait()

        return stub.UploadDatasetChunk.future(messages(), timeout=50)

    def health(self, timeout: float = 2):
        stub = health_pb2_grpc.HealthStub(open_channel(self.target))
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


@pytest.fixture
def coordinator_with(tmp_path):
    started: list[Coordinator] = []

    def start(**env) -> Coordinator:
        started.append(Coordinator(tmp_path, **env))
        return started[-1]

    yield start
    for c in started:
        c.hang.set()
        c.served.running.stop(grace=0)


def outcome(future: grpc.Future, timeout: float = 10) -> tuple[str, str]:
    """(status code name, ErrorInfo reason) of a finished call."""
    error = future.exception(timeout=timeout)
    if error is None:
        return "OK", ""
    return error.code().name, status_details(error).get("reason", "")


def readers() -> int:
    return sum(t.name == "rpc-stream-reader" for t in threading.enumerate())


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


def test_sixteen_idle_streams_of_one_tenant_do_not_freeze_the_server(coordinator_with):
    # The finding: 16 UploadDatasetChunk streams that send one chunk and then nothing took all 16 RPC threads,
    # and the health check and another tenant's ListDatasets timed out.
    c = coordinator_with(UMBRA_STREAM_IDLE_SECONDS=3)
    version = c.version(c.acme)
    baseline = readers()
    opened = time.monotonic()
    streams = [c.one_chunk_then_nothing(c.acme, version) for _ in range(16)]

    time.sleep(1)

    # The health check, another tenant and the tenant itself are answered, quickly.
    started = time.monotonic()
    assert c.health(timeout=2) == health_pb2.HealthCheckResponse.SERVING
    assert c.globex.ListDatasets(ds.ListDatasetsRequest(), timeout=2) is not None
    assert [d.name for d in c.acme.ListDatasets(ds.ListDatasetsRequest(), timeout=2).datasets] == ["datasets/big"]
    assert time.monotonic() - started < 3

    # The tenant's streams over its cap (UMBRA_TENANT_MAX_STREAMS, 2) were refused at once, retry-later.
    refused = [s for s in streams if s.done()]
    assert len(refused) == 14
    assert {outcome(s) for s in refused} == {("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS")}
    error = refused[0].exception()
    assert "UMBRA_TENANT_MAX_STREAMS" in error.details() and "retry" in error.details()
    assert retry_info(error).retry_delay.seconds >= 1
    idle = [s for s in streams if s not in refused]
    assert not any(s.done() for s in idle)  # these two are in the servicer, waiting for their next chunk

    # The idle streams end after UMBRA_STREAM_IDLE_SECONDS with a clear status, and free their threads.
    for s in idle:
        assert outcome(s) == ("DEADLINE_EXCEEDED", "STREAM_IDLE")
        assert "3 s without a message" in s.exception().details()
    assert 2.8 < time.monotonic() - opened < 8
    deadline = time.monotonic() + 5
    while readers() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readers() == baseline  # the helper threads that waited on grpc's next() are gone too

    # A new upload of the tenant is accepted and goes through.
    done = c.acme.UploadDatasetChunk(iter([ds.UploadDatasetChunkRequest(
        dataset_version=version, shard=SHARD, offset=0, data=b"xyz", sha256=hashlib.sha256(b"xyz").hexdigest())]),
        timeout=10)
    assert done.object.size_bytes == 3


def test_calls_are_capped_per_tenant_and_streams_in_all(coordinator_with):
    c = coordinator_with(UMBRA_TENANT_MAX_CALLS=2, UMBRA_MAX_STREAMS=3)
    acme_version, globex_version = c.version(c.acme), c.version(c.globex)
    acme_streams = [c.one_chunk_then_nothing(c.acme, acme_version) for _ in range(2)]
    first = c.one_chunk_then_nothing(c.globex, globex_version)

    # Once acme's two streams are in, acme holds its 2 calls and its next one is refused.
    deadline = time.monotonic() + 10
    while True:
        try:
            c.acme.ListDatasets(ds.ListDatasetsRequest(), timeout=2)
        except grpc.RpcError as exc:
            err = exc
            break
        assert time.monotonic() < deadline, "acme's streams never reached the servicer"
        time.sleep(0.1)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_details(err) == {"reason": "TOO_MANY_CALLS", "domain": "umbra.dev",
                                   "metadata": {"limit": "tenant_max_calls", "max": "2"}}
    assert "UMBRA_TENANT_MAX_CALLS" in err.details()
    time.sleep(0.5)
    assert not any(s.done() for s in [*acme_streams, first])

    # globex, the admin and the health check are answered.
    assert [d.name for d in c.globex.ListDatasets(ds.ListDatasetsRequest(), timeout=2).datasets] == ["datasets/big"]
    admin = tenant_service_pb2_grpc.TenantServiceStub(open_channel(c.target, ADMIN_KEY))
    assert len(admin.ListTenants(tenant_service_pb2.ListTenantsRequest(), timeout=2).tenants) == 2
    assert c.health() == health_pb2.HealthCheckResponse.SERVING

    # Three client streams are open in all (UMBRA_MAX_STREAMS): globex's second is refused, though globex has
    # only one.
    second = c.one_chunk_then_nothing(c.globex, globex_version)
    assert outcome(second) == ("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS")
    assert status_details(second.exception())["metadata"] == {"limit": "max_streams", "max": "3"}

    # When the streams end, their slots are free again.
    c.hang.set()
    for s in [*acme_streams, first]:
        assert outcome(s) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")  # half-closed without the SHA-256
    assert c.acme.ListDatasets(ds.ListDatasetsRequest(), timeout=2) is not None


def test_a_stream_that_keeps_sending_may_last_at_most_stream_max_seconds(coordinator_with):
    c = coordinator_with(UMBRA_STREAM_IDLE_SECONDS=1, UMBRA_STREAM_MAX_SECONDS=2)
    version = c.version(c.acme)

    def trickle():
        for offset in range(100):
            yield ds.UploadDatasetChunkRequest(dataset_version=version, shard=SHARD, offset=offset, data=b"x")
            if c.hang.wait(0.3):
                return

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        c.acme.UploadDatasetChunk(trickle(), timeout=20)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_details(err.value)["reason"] == "STREAM_TOO_LONG"
    assert "UMBRA_STREAM_MAX_SECONDS" in err.value.details()
    assert 1.8 < time.monotonic() - started < 5


def test_an_idle_reflection_stream_without_credential_is_ended_too(coordinator_with):
    c = coordinator_with(UMBRA_STREAM_IDLE_SECONDS=1)
    method = open_channel(c.target).stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)

    def one_request_then_nothing():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        c.hang.wait()

    responses = method(one_request_then_nothing(), timeout=20)
    assert next(responses).list_services_response.service  # answered, then nothing more is sent
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        next(responses)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_details(err.value)["reason"] == "STREAM_IDLE"
    assert time.monotonic() - started < 4


def test_calls_waiting_for_a_thread_are_bounded(tmp_path):
    # Two RPC threads, no queue: a third call at once is refused by grpc (service calls are not capped per
    # tenant, so this is grpc's own maximum_concurrent_rpcs).
    running = create_server(config_for("training", tmp_path, UMBRA_MAX_WORKERS=2, UMBRA_MAX_QUEUED_CALLS=0),
                            sleeper_spec()).start()
    try:
        channel = open_channel(f"127.0.0.1:{running.port}", SERVICE_TOKEN)
        second = duration_pb2.Duration(seconds=1)
        with ThreadPoolExecutor(2) as pool:
            sleeping = [pool.submit(call, channel, "Sleep", second, empty_pb2.Empty, timeout=10)
                        for _ in range(2)]
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as err:
                call(channel, "Sleep", duration_pb2.Duration(), empty_pb2.Empty, timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            [s.result() for s in sleeping]
    finally:
        running.stop(grace=0)
