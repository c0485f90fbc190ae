"""The shared runtime through real gRPC over a socket: health, reflection, authentication, error mapping,
message limits, and long-running operations."""

from __future__ import annotations

import io
import json
import logging
import time

import grpc
import pytest
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import duration_pb2, empty_pb2
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from sleeper import SERVICE as SLEEPER_SERVICE, call, sleeper_spec
from support import SERVICE_TOKEN, config_for, status_details
from umbra.client import protos
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient, progress_of
from umbra.runtime import logs
from umbra.runtime.errors import InvalidInput
from umbra.runtime.server import create_server

CONTRACT = {
    "coordinator": "umbra.coordinator.v1.JobService",
    "anonymizer": "umbra.anonymizer.v1.AnonymizerService",
    "distortion": "umbra.distortion.v1.DistortionService",
    "training": "umbra.training.v1.TrainingService",
    "unlearning": "umbra.unlearning.v1.UnlearningService",
}


@pytest.fixture
def sleeper(tmp_path):
    holder: list = []
    running = create_server(config_for("training", tmp_path, UMBRA_MAX_MESSAGE_BYTES=65536), sleeper_spec(holder))
    running.start()
    yield running, holder[0], f"127.0.0.1:{running.port}"
    running.stop(grace=0)


# What an empty request gets once it passes authentication: the servicer's own refusal of the empty request.
REACHED = {"coordinator": ("GetProtectionJob", grpc.StatusCode.INVALID_ARGUMENT, "name: must look like"),
           "training": ("GetModelVersion", grpc.StatusCode.INVALID_ARGUMENT, "name: must look like"),
           "distortion": ("DistortDataset", grpc.StatusCode.INVALID_ARGUMENT, "copies: is 0"),
           "anonymizer": ("TrainGenerator", grpc.StatusCode.INVALID_ARGUMENT, "model: must look like"),
           "unlearning": ("Unlearn", grpc.StatusCode.INVALID_ARGUMENT, "model: needs model")}


def reached_method(service: str) -> str:
    """'/package.Service/Method' of the RPC of `service` that the authentication tests call."""
    protos.load_all()
    from google.protobuf import descriptor_pool

    described = descriptor_pool.Default().FindServiceByName(CONTRACT[service])
    name = REACHED[service][0]
    return f"/{described.full_name}/{name}"


def raw_call(channel, method: str, request: bytes, **kwargs):
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)(request, **kwargs)


def test_health_and_reflection(any_service):
    channel = any_service.channel(credential="")  # neither needs a credential (Kubernetes probes, buf curl)
    health = health_pb2_grpc.HealthStub(channel)
    own = CONTRACT[any_service.name]
    for name in ("", own, "google.longrunning.Operations"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {own, "google.longrunning.Operations", "grpc.health.v1.Health"} <= listed


def test_authentication_comes_before_the_servicer(any_service):
    method = reached_method(any_service.name)
    for credential, reason in (("", "CREDENTIAL_MISSING"), ("not-a-key", "CREDENTIAL_INVALID")):
        with pytest.raises(grpc.RpcError) as err:
            raw_call(any_service.channel(credential=credential), method, b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert status_details(err.value)["reason"] == reason
    # With a valid credential the call reaches the servicer, which refuses the empty request itself.
    with pytest.raises(grpc.RpcError) as err:
        raw_call(any_service.channel(), method, b"", timeout=5)
    code, text = REACHED[any_service.name][1:]
    assert err.value.code() == code and text in err.value.details()
    assert status_details(err.value)["reason"] == code.name


def test_credentials_are_not_interchangeable(all_services):
    coordinator, training = all_services["coordinator"], all_services["training"]
    method = reached_method("training")
    with pytest.raises(grpc.RpcError) as err:  # a tenant key on an internal service
        raw_call(training.channel(credential=coordinator.credential), method, b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    method = reached_method("coordinator")
    with pytest.raises(grpc.RpcError) as err:  # the service token on the public coordinator
        raw_call(coordinator.channel(credential=SERVICE_TOKEN), method, b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_revoked_key_is_refused(all_services, tmp_path):
    from umbra.services.coordinator.api_keys import ApiKeyStore
    from umbra.services.coordinator.db import CoordinatorDB

    coordinator = all_services["coordinator"]
    db = CoordinatorDB(coordinator.running.runtime.config.data_dir / "coordinator.sqlite3")
    keys = ApiKeyStore(db)
    key_id, key = keys.issue("acme", "to revoke")
    method = reached_method("coordinator")
    with pytest.raises(grpc.RpcError) as err:
        raw_call(coordinator.channel(credential=key), method, b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # accepted: the servicer refused the empty request
    keys.revoke("acme", key_id)
    with pytest.raises(grpc.RpcError) as err:
        raw_call(coordinator.channel(credential=key), method, b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    db.close()


def test_unauthenticated_call_never_reaches_the_servicer(sleeper):
    _, servicer, target = sleeper
    with pytest.raises(grpc.RpcError) as err:
        call(open_channel(target), "Fail", empty_pb2.Empty(), empty_pb2.Empty, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Fail" not in servicer.calls


def test_errors_map_to_status_codes_with_error_info(sleeper):
    _, servicer, target = sleeper
    channel = open_channel(target, SERVICE_TOKEN)
    servicer.failure = InvalidInput("dataset.version", "must be positive")
    with pytest.raises(grpc.RpcError) as err:
        call(channel, "Fail", empty_pb2.Empty(), empty_pb2.Empty, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset.version" in err.value.details()
    details = status_details(err.value)
    assert details["reason"] == "INVALID_ARGUMENT" and details["domain"] == "umbra.dev"
    assert details["fields"] == ["dataset.version"]

    servicer.failure = RuntimeError("secret internals")
    with pytest.raises(grpc.RpcError) as err:
        call(channel, "Fail", empty_pb2.Empty(), empty_pb2.Empty, timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in err.value.details()  # generic message; the traceback is in the log
    assert err.value.details().startswith("internal error (rpc id ")


def test_request_id_is_echoed_and_logged(sleeper):
    _, _, target = sleeper
    stream = io.StringIO()
    logs.configure("sleeper", "INFO", stream)
    try:
        channel = open_channel(target, SERVICE_TOKEN, tenant="acme")
        sleep = channel.unary_unary(f"/{SLEEPER_SERVICE}/Sleep",
                                    request_serializer=duration_pb2.Duration.SerializeToString,
                                    response_deserializer=empty_pb2.Empty.FromString)
        _, call_info = sleep.with_call(duration_pb2.Duration(), metadata=(("x-request-id", "req-42"),), timeout=5)
        assert dict(call_info.trailing_metadata())["x-request-id"] == "req-42"
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [entry for entry in lines if entry["msg"] == "rpc done"]
    assert done and done[-1]["rpc_id"] == "req-42" and done[-1]["tenant"] == "acme"
    assert done[-1]["method"] == f"/{SLEEPER_SERVICE}/Sleep"
    assert SERVICE_TOKEN not in stream.getvalue()


def test_oversized_and_malformed_requests(sleeper):
    _, servicer, target = sleeper
    channel = open_channel(target, SERVICE_TOKEN)
    with pytest.raises(grpc.RpcError) as err:
        raw_call(channel, f"/{SLEEPER_SERVICE}/Sleep", b"\x0a" * 100_000, timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:
        raw_call(channel, f"/{SLEEPER_SERVICE}/Sleep", b"\xff\xff\xff", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in status_details(err.value)["fields"]
    assert "Sleep" not in servicer.calls


def test_sdk_retries_unavailable(sleeper):
    _, servicer, target = sleeper
    servicer.flaky_failures = 2
    call(open_channel(target, SERVICE_TOKEN), "Flaky", empty_pb2.Empty(), empty_pb2.Empty, timeout=10)
    assert servicer.calls["Flaky"] == 3


def test_operation_lifecycle(sleeper):
    _, _, target = sleeper
    channel = open_channel(target, SERVICE_TOKEN, tenant="acme")
    ops = operations_pb2_grpc.OperationsStub(channel)
    op = call(channel, "Start", duration_pb2.Duration(nanos=300_000_000), lro.Operation, timeout=5)
    assert op.name.startswith("operations/") and not op.done
    done = ops.WaitOperation(lro.WaitOperationRequest(name=op.name, timeout=duration_pb2.Duration(seconds=10)),
                             timeout=15)
    assert done.done and not done.HasField("error")
    result = duration_pb2.Duration()
    assert done.response.Unpack(result) and result.nanos == 300_000_000
    progress = progress_of(done)
    assert progress.stage == "done" and progress.done == progress.total == 3 and progress.unit == "ticks"
    assert progress.HasField("end_time")


def test_cancel_stops_the_work(sleeper):
    _, _, target = sleeper
    channel = open_channel(target, SERVICE_TOKEN, tenant="acme")
    ops = operations_pb2_grpc.OperationsStub(channel)
    op = call(channel, "Start", duration_pb2.Duration(seconds=60), lro.Operation, timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        ops.DeleteOperation(lro.DeleteOperationRequest(name=op.name), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    started = time.monotonic()
    ops.CancelOperation(lro.CancelOperationRequest(name=op.name), timeout=5)
    done = ops.WaitOperation(lro.WaitOperationRequest(name=op.name, timeout=duration_pb2.Duration(seconds=10)),
                             timeout=15)
    assert done.done and done.error.code == code_pb2.CANCELLED
    assert time.monotonic() - started < 5
    assert progress_of(done).cancel_requested and progress_of(done).stage == "cancelled"
    ops.DeleteOperation(lro.DeleteOperationRequest(name=op.name), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        ops.GetOperation(lro.GetOperationRequest(name=op.name), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_operations_validate_and_isolate_tenants(sleeper):
    _, _, target = sleeper
    acme = operations_pb2_grpc.OperationsStub(open_channel(target, SERVICE_TOKEN, tenant="acme"))
    names = [call(open_channel(target, SERVICE_TOKEN, tenant="acme"), "Start", duration_pb2.Duration(),
                  lro.Operation, timeout=5).name for _ in range(3)]
    seen, token = [], ""
    while True:
        page = acme.ListOperations(lro.ListOperationsRequest(page_size=1, page_token=token), timeout=5)
        assert len(page.operations) <= 1
        seen += [o.name for o in page.operations]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names)  # names are time-ordered, so pages come in creation order
    with pytest.raises(grpc.RpcError) as err:
        acme.ListOperations(lro.ListOperationsRequest(page_size=1, page_token=page_token_for(acme), filter="done=true"),
                            timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.value.details()
    for bad, field in ((lro.ListOperationsRequest(page_size=-1), "page_size"),
                       (lro.ListOperationsRequest(filter="stage = 'x'"), "filter")):
        with pytest.raises(grpc.RpcError) as err:
            acme.ListOperations(bad, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and status_details(err.value)["fields"] == [field]
    with pytest.raises(grpc.RpcError) as err:
        acme.GetOperation(lro.GetOperationRequest(name="../../etc/passwd"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and status_details(err.value)["fields"] == ["name"]
    other = operations_pb2_grpc.OperationsStub(open_channel(target, SERVICE_TOKEN, tenant="globex"))
    assert not other.ListOperations(lro.ListOperationsRequest(), timeout=5).operations
    with pytest.raises(grpc.RpcError) as err:
        other.CancelOperation(lro.CancelOperationRequest(name=names[0]), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def page_token_for(stub) -> str:
    return stub.ListOperations(lro.ListOperationsRequest(page_size=1), timeout=5).next_page_token


def test_sdk_waits_with_progress(sleeper, capsys):
    _, _, target = sleeper
    op = call(open_channel(target, SERVICE_TOKEN, tenant="acme"), "Start", duration_pb2.Duration(nanos=500_000_000),
              lro.Operation, timeout=5)
    operations = OperationsClient(open_channel(target, SERVICE_TOKEN, tenant="acme"))
    result = operations.result(op.name, duration_pb2.Duration, progress=True, poll_seconds=0.2)
    assert result.nanos == 500_000_000
    assert "ticks" in capsys.readouterr().err  # the progress bar was drawn on stderr
