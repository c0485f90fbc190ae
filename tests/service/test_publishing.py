"""Publishing to the inference server and public pretraining, with every part real: the training service over
gRPC, the inference server (`python -m umbra.inference.triton --store`, a real Triton) watching the same object
store, tritonclient calls, and `umbra models predict`."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch

from support import SERVICE_TOKEN, commit_faces, config_for, free_port, status_details
from umbra.classifiers.architectures import create
from umbra.classifiers.registry import ModelRegistry
from umbra.client import inference
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.dataset import synthetic
from umbra.runtime.server import create_server
from umbra.services.registry import spec
from umbra.storage.local import LocalObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("pub")  # short: PyTriton's unix sockets live in the workspace
    store = LocalObjectStore(home / "objects")
    for tenant in ("acme", "globex"):
        store.ensure_bucket(f"umbra-{tenant}")
    commit_faces(store, "umbra-acme", 160, size=32, seed=4)
    commit_faces(store, "umbra-acme", 160, size=32, seed=9, dataset="public-faces")
    port = free_port()
    env = dict(os.environ, UMBRA_STORE="local", UMBRA_STORE_DIR=str(home / "objects"), UMBRA_HOME=str(home))
    log = open(home / "triton.log", "wb")
    triton = subprocess.Popen(
        [sys.executable, "-m", "umbra.inference.triton", "--store", "--grpc-port", str(port), "--poll-seconds",
         "0.5", "--workspace", str(home / "ws")], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    running = create_server(config_for("training", home, UMBRA_INFERENCE_URL=url), spec("training")).start()
    target = f"127.0.0.1:{running.port}"
    channel = open_channel(target, SERVICE_TOKEN, tenant="acme")
    try:
        yield training_service_pb2_grpc.TrainingServiceStub(channel), OperationsClient(channel), store, url, target
    finally:
        running.stop(grace=0)
        triton.terminate()
        triton.wait(timeout=30)
        log.close()


def train(stub, operations, model: str, dataset: str, task: str, **fields) -> ts.ModelVersion:
    request = ts.TrainRequest(
        model=model, dataset=refs_pb2.DatasetRef(dataset=dataset, version=1), task=task, seed=0,
        architecture=ts.ARCHITECTURE_GROUPNORM_CNN,
        hyperparameters=ts.Hyperparameters(epochs=1, batch_size=32, learning_rate=2e-3), **fields)
    return operations.result(stub.Train(request, timeout=30).operation.name, ts.ModelVersion, poll_seconds=0.5)


def test_published_model_answers_like_the_model_in_process(stack, tmp_path):
    stub, operations, store, url, _ = stack
    trained = train(stub, operations, "models/smile", "datasets/faces", "smile")
    exported = stub.ExportModelVersion(ts.ExportModelVersionRequest(
        model=refs_pb2.ModelRef(model="models/smile", version=1), served_model_name="smile-api"), timeout=90)
    assert exported.served_model_name == "acme.smile-api" and exported.endpoint == url

    registry = ModelRegistry(store)
    stored = registry.get("umbra-acme", "smile", 1)
    model = create(stored.config).eval()
    model.load_state_dict(registry.weights("umbra-acme", "smile", 1))
    images = np.random.default_rng(0).random((70, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(inference.predict(url, exported.served_model_name, images), expected, atol=1e-4)
    assert inference.input_size(url, exported.served_model_name) == 32

    again = stub.ExportModelVersion(ts.ExportModelVersionRequest(
        model=refs_pb2.ModelRef(model="models/smile", version=1), served_model_name="smile-api"), timeout=30)
    assert again == exported  # publishing the same version twice is a no-op

    faces = tmp_path / "faces"
    synthetic.write_folder(faces, 3, size=64, seed=1)
    out = subprocess.run(
        [sys.executable, "-m", "umbra.cli.main", "models", "predict", str(faces / "images"), "--model",
         exported.served_model_name, "--endpoint", url, "--classes", ",".join(trained.training_record.classes)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split()[1] in ("0", "1") for line in lines)

    unknown = subprocess.run(
        [sys.executable, "-m", "umbra.cli.main", "models", "predict", str(faces / "images"), "--model",
         "acme.nothing", "--endpoint", url], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "acme.nothing" in unknown.stderr


def test_export_refuses_bad_requests(stack):
    stub, operations, _, _, target = stack
    train(stub, operations, "models/glasses", "datasets/faces", "glasses")
    train(stub, operations, "models/glasses", "datasets/faces", "glasses")

    def refused(request, channel=None) -> grpc.RpcError:
        caller = stub if channel is None else training_service_pb2_grpc.TrainingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            caller.ExportModelVersion(request, timeout=60)
        return err.value

    ref = refs_pb2.ModelRef(model="models/glasses", version=1)
    stub.ExportModelVersion(ts.ExportModelVersionRequest(model=ref, served_model_name="glasses"), timeout=90)
    taken = refused(ts.ExportModelVersionRequest(model=refs_pb2.ModelRef(model="models/glasses", version=2),
                                                 served_model_name="glasses"))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS and "models/glasses/versions/1" in taken.details()
    bad_name = refused(ts.ExportModelVersionRequest(model=ref, served_model_name="Not A Name"))
    assert bad_name.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(bad_name)["metadata"]["field"] == "served_model_name"
    other_tenant = refused(ts.ExportModelVersionRequest(model=ref, served_model_name="stolen"),
                           open_channel(target, SERVICE_TOKEN, tenant="globex"))
    assert other_tenant.code() == grpc.StatusCode.NOT_FOUND
    missing = refused(ts.ExportModelVersionRequest(model=refs_pb2.ModelRef(model="models/glasses", version=9)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_public_pretraining_is_recorded_and_checked(stack):
    stub, operations, _, _, _ = stack
    public = train(stub, operations, "models/public-gender", "datasets/public-faces", "gender")
    start = refs_pb2.ModelRef(model="models/public-gender", version=int(public.name.rsplit("/", 1)[1]))
    dp = ts.DifferentialPrivacy(target_epsilon=4.0, target_delta=1e-3)
    tuned = train(stub, operations, "models/gender", "datasets/faces", "gender", initialize_from=start,
                  differential_privacy=dp)
    assert tuned.training_record.initialized_from == start
    assert 0 < tuned.training_record.privacy_cost.epsilon <= 4.0

    def refused(**fields) -> grpc.RpcError:
        request = ts.TrainRequest(model="models/fresh", task="gender", **fields,
                                  dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                                  hyperparameters=ts.Hyperparameters(epochs=1, batch_size=32))
        with pytest.raises(grpc.RpcError) as err:
            stub.Train(request, timeout=30)
        return err.value

    same_data = train(stub, operations, "models/private", "datasets/faces", "gender")
    own = refused(initialize_from=refs_pb2.ModelRef(model="models/private", version=1), differential_privacy=dp)
    assert same_data and own.code() == grpc.StatusCode.INVALID_ARGUMENT and "public data" in own.details()
    resnet = refused(initialize_from=start, architecture=ts.ARCHITECTURE_SMALL_RESNET)
    assert resnet.code() == grpc.StatusCode.INVALID_ARGUMENT and "groupnorm_cnn" in resnet.details()
    absent = refused(initialize_from=refs_pb2.ModelRef(model="models/none", version=1))
    assert absent.code() == grpc.StatusCode.NOT_FOUND


def test_export_without_an_inference_server_is_a_failed_precondition(tmp_path):
    running = create_server(config_for("training", tmp_path), spec("training")).start()
    try:
        stub = training_service_pb2_grpc.TrainingServiceStub(
            open_channel(f"127.0.0.1:{running.port}", SERVICE_TOKEN, tenant="acme"))
        with pytest.raises(grpc.RpcError) as err:
            stub.ExportModelVersion(ts.ExportModelVersionRequest(
                model=refs_pb2.ModelRef(model="models/some-model", version=1)), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "UMBRA_INFERENCE_URL" in err.value.details()
    finally:
        running.stop(grace=0)


def test_a_server_scoped_to_tenants_serves_only_theirs(tmp_path):
    """`--tenant`: the inference server loads the publications of the tenants it is given, none of the others'."""
    from umbra.classifiers.model_config import ModelConfig
    from umbra.inference import publications
    from umbra.inference.triton import sync_publications

    class Server:  # what sync_publications uses of InferenceServer, without starting Triton
        def __init__(self):
            self.models = {}

        def add(self, served):
            self.models[served.name] = served

        def remove(self, name):
            del self.models[name]

    store = LocalObjectStore(tmp_path / "objects")
    config = ModelConfig("groupnorm_cnn", 2, 32, classes=["a", "b"], width=8)
    for tenant in ("acme", "globex", "initech"):
        store.ensure_bucket(f"umbra-{tenant}")
        version = ModelRegistry(store).write(f"umbra-{tenant}", "smile", config, create(config).state_dict(), {})
        publications.publish(store, tenant, "smile-api", "smile", version)
    scoped, everyone = Server(), Server()
    sync_publications(scoped, store, {}, {"acme", "initech"})
    sync_publications(everyone, store, {})
    assert sorted(scoped.models) == ["acme.smile-api", "initech.smile-api"]
    assert sorted(everyone.models) == ["acme.smile-api", "globex.smile-api", "initech.smile-api"]
