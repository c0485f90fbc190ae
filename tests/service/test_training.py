"""The training service over real gRPC: a small DP-SGD run as a long-running operation with progress and epsilon
in its metadata, the registry (get, list, delete), evaluation, and bad input refused before any compute."""

from __future__ import annotations

import grpc
import pytest
from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro

from support import SERVICE_TOKEN, commit_faces, config_for, status_details, with_fields
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import refs_pb2
from umbra.runtime.server import create_server
from umbra.services.registry import spec
from umbra.storage.local import LocalObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = LocalObjectStore(home / "objects")
    store.ensure_bucket("umbra-acme")
    commit_faces(store, "umbra-acme", 240, size=32, seed=4)
    running = create_server(config_for("training", home), spec("training")).start()
    target = f"127.0.0.1:{running.port}"
    channel = open_channel(target, SERVICE_TOKEN, tenant="acme")
    yield training_service_pb2_grpc.TrainingServiceStub(channel), OperationsClient(channel), channel, target
    running.stop(grace=0)


def train_request(**overrides) -> ts.TrainRequest:
    return with_fields(ts.TrainRequest(
        model="models/smile", dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), task="smile",
        architecture=ts.ARCHITECTURE_GROUPNORM_CNN, seed=0,
        hyperparameters=ts.Hyperparameters(epochs=2, batch_size=32, physical_batch_size=16, learning_rate=2e-3),
        differential_privacy=ts.DifferentialPrivacy(target_epsilon=4.0, target_delta=1e-3, max_grad_norm=1.0)),
        **overrides)


def test_dp_training_registry_and_evaluation(training):
    stub, operations, channel, _ = training
    op = stub.Train(train_request(), timeout=30).operation
    trained = operations.result(op.name, ts.ModelVersion, poll_seconds=1)
    assert trained.name == "models/smile/versions/1" and trained.state == ts.ModelVersion.STATE_READY
    record = trained.training_record
    assert record.task == "smile" and list(record.classes) == ["0", "1"] and record.steps > 0
    assert 0 < record.privacy_cost.epsilon <= 4.0 and record.privacy_cost.delta == 1e-3
    assert trained.weights.key == "models/smile/v1/weights.safetensors"
    progress = progress_of(operations.get(op.name))
    assert progress.done == progress.total == 2 and progress.unit == "epochs"
    assert progress.privacy_spent.epsilon == pytest.approx(record.privacy_cost.epsilon)

    evaluation = operations.result(stub.Evaluate(ts.EvaluateRequest(
        model=refs_pb2.ModelRef(model="models/smile", version=1),
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="test")), timeout=30).operation.name,
        ts.Evaluation, poll_seconds=1)
    assert evaluation.sample_count == 60 and 0 <= evaluation.balanced_accuracy <= 1
    assert sum(c.support for c in evaluation.per_class) == 60

    listed = stub.ListModelVersions(ts.ListModelVersionsRequest(parent="models/-"), timeout=10)
    assert [v.name for v in listed.model_versions] == ["models/smile/versions/1"]
    assert stub.GetModelVersion(ts.GetModelVersionRequest(name=trained.name), timeout=10).model_version == trained
    other = training_service_pb2_grpc.TrainingServiceStub(open_channel(training[3], SERVICE_TOKEN, tenant="globex"))
    for call in (lambda: other.GetModelVersion(ts.GetModelVersionRequest(name=trained.name), timeout=10),
                 lambda: other.Train(train_request(), timeout=10)):  # globex has no such model, nor dataset
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stub.DeleteModelVersion(ts.DeleteModelVersionRequest(name=trained.name), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelVersion(ts.GetModelVersionRequest(name=trained.name), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("overrides, code, field", [
    ({"task": "race"}, grpc.StatusCode.INVALID_ARGUMENT, "task"),
    ({"dataset": refs_pb2.DatasetRef(dataset="datasets/nope", version=1)}, grpc.StatusCode.NOT_FOUND, None),
    ({"dataset": refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="holdout")},
     grpc.StatusCode.INVALID_ARGUMENT, "dataset.split"),
    ({"hyperparameters": ts.Hyperparameters(epochs=1, batch_size=100_000)}, grpc.StatusCode.INVALID_ARGUMENT,
     "hyperparameters.batch_size"),
    ({"differential_privacy": ts.DifferentialPrivacy(target_epsilon=-1, target_delta=1e-3)},
     grpc.StatusCode.INVALID_ARGUMENT, "differential_privacy"),
    ({"differential_privacy": ts.DifferentialPrivacy(target_epsilon=1, target_delta=0.1)},
     grpc.StatusCode.INVALID_ARGUMENT, "differential_privacy.target_delta"),
    ({"model": "models/../x"}, grpc.StatusCode.INVALID_ARGUMENT, "model"),
    ({"revision": refs_pb2.DatasetRevision(removed_keys=["no-such-key"])}, grpc.StatusCode.INVALID_ARGUMENT,
     "revision.removed_keys"),
    ({"revision": refs_pb2.DatasetRevision(revised=refs_pb2.DatasetRef(dataset="datasets/faces", version=9))},
     grpc.StatusCode.NOT_FOUND, None),
])
def test_bad_input_is_refused_before_any_compute(training, overrides, code, field):
    stub, _, channel, _ = training
    with pytest.raises(grpc.RpcError) as err:
        stub.Train(train_request(**overrides), timeout=30)
    assert err.value.code() == code, err.value.details()
    if field:
        assert status_details(err.value)["fields"] == [field]
    listed = operations_pb2_grpc.OperationsStub(channel).ListOperations(
        lro.ListOperationsRequest(filter="done = false"), timeout=10)
    assert not listed.operations  # nothing was started


def test_cancel_stops_training(training):
    stub, operations, _, _ = training
    op = stub.Train(train_request(model="models/long", hyperparameters=ts.Hyperparameters(
        epochs=50, batch_size=32, physical_batch_size=16)), timeout=30).operation
    operations.cancel(op.name)
    with pytest.raises(OperationFailed, match="CANCELLED"):
        operations.result(op.name, ts.ModelVersion, poll_seconds=1, timeout=120)
