"""Published models answer only their tenant's key (issue 26), with every part real: the coordinator over gRPC with
tenant API keys, the inference server (`python -m umbra.inference.triton --store`, a real Triton) started with the
coordinator's service token, so that its protocols (but health) take only the coordinator's access token, and
tritonclient calls straight to it."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from support import ADMIN_KEY, SERVICE_TOKEN, create_tenant, free_port, start_service, status_details
from umbra.classifiers.architectures import create
from umbra.classifiers.model_config import ModelConfig
from umbra.classifiers.registry import ModelRegistry
from umbra.client import inference
from umbra.client.channel import open_channel
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import model_service_pb2 as ms
from umbra.coordinator.v1 import model_service_pb2_grpc
from umbra.coordinator.v1 import tenant_service_pb2, tenant_service_pb2_grpc
from umbra.inference import publications
from umbra.storage.local import LocalObjectStore

pytestmark = pytest.mark.slow

CONFIG = ModelConfig("groupnorm_cnn", 2, 32, classes=["0", "1"], width=8)


def write_model(store, tenant: str, model: str, seed: int) -> torch.nn.Module:
    """A small real (untrained, seeded) classifier as the training service leaves one; returned in eval mode."""
    torch.manual_seed(seed)
    net = create(CONFIG).eval()
    ModelRegistry(store).write(f"umbra-{tenant}", model, CONFIG, net.state_dict(),
                               {"task": "gender", "classes": ["0", "1"], "dataset": {"dataset": "datasets/faces"}})
    return net


def in_process(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(images)).numpy()


def tensor(images: np.ndarray) -> ms.Tensor:
    return ms.Tensor(shape=images.shape, float32_data=images.astype("<f4").tobytes())


class Caller:
    """ModelService as one credential ("" for none) sees it."""

    def __init__(self, target: str, key: str):
        self.key = key
        channel = open_channel(target, key)
        self.stub = model_service_pb2_grpc.ModelServiceStub(channel)
        self.operations = OperationsClient(channel)

    def publish(self, publication_id: str, model: str) -> ms.Publication:
        name = self.stub.PublishModel(ms.PublishModelRequest(
            publication_id=publication_id, model=refs_pb2.ModelRef(model=f"models/{model}", version=1)),
            timeout=30).operation.name
        return self.operations.result(name, ms.Publication, timeout=120, poll_seconds=0.5)

    def predict(self, name: str, images: np.ndarray) -> np.ndarray:
        outputs = self.stub.Predict(ms.PredictRequest(name=name, inputs=tensor(images)), timeout=60).outputs
        return np.frombuffer(outputs.float32_data, dtype="<f4").reshape(tuple(outputs.shape))

    def refused(self, request: ms.PredictRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as err:
            self.stub.Predict(request, timeout=60)
        return err.value


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("gw")  # short: PyTriton's unix sockets live in the workspace
    store = LocalObjectStore(home / "objects")
    port = free_port()
    env = dict(os.environ, UMBRA_STORE="local", UMBRA_STORE_DIR=str(home / "objects"), UMBRA_HOME=str(home),
               UMBRA_SERVICE_TOKEN=SERVICE_TOKEN)  # the coordinator's: Triton takes the access token derived from it
    log = open(home / "triton.log", "wb")
    triton = subprocess.Popen(
        [sys.executable, "-m", "umbra.inference.triton", "--store", "--grpc-port", str(port), "--poll-seconds",
         "0.5", "--workspace", str(home / "ws")], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    coordinator = start_service("coordinator", home, "acme", UMBRA_STORE_DIR=str(home / "objects"),
                                UMBRA_INFERENCE_URL=url)
    target = coordinator.target
    acme, globex = Caller(target, coordinator.credential), Caller(target, create_tenant(target, "globex"))
    models = {"acme": write_model(store, "acme", "smile", 1), "globex": write_model(store, "globex", "smile", 2)}
    try:
        acme.publish("smile-api", "smile")
        yield acme, globex, models, url, target, store
    finally:
        coordinator.running.stop(grace=0)
        triton.terminate()
        triton.wait(timeout=30)
        log.close()


def test_without_the_tenants_key_a_published_model_gives_no_answer(stack):
    acme, globex, _, url, target, _ = stack
    images = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)

    # Straight to Triton: refused by Triton itself without the coordinator's access token (or with another).
    assert inference.readiness(url, ["acme.smile-api"]) == {"acme.smile-api": True}  # health stays open
    for headers in (None, {"triton-grpc-protocol-triton-access-token": "0" * 64}):  # none, a wrong one
        client = grpcclient.InferenceServerClient(url)
        try:
            request_input = grpcclient.InferInput("images", list(images.shape), "FP32")
            request_input.set_data_from_numpy(images)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.infer("acme.smile-api", [request_input], headers=headers)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_model_metadata("acme.smile-api", headers=headers)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_model_repository_index(headers=headers)  # no listing of every tenant's models either
        finally:
            client.close()
    with pytest.raises(InferenceServerException, match="restricted"):
        inference.predict(url, "acme.smile-api", images)  # the SDK's direct path

    # Through the coordinator: only with the tenant's key.
    request = ms.PredictRequest(name="publications/smile-api", inputs=tensor(images))
    no_key = Caller(target, "").refused(request)
    assert no_key.code() == grpc.StatusCode.UNAUTHENTICATED
    forged = Caller(target, "umbra_0123456789ab_" + "x" * 43).refused(request)
    assert forged.code() == grpc.StatusCode.UNAUTHENTICATED
    other_tenant = globex.refused(request)  # globex has no publication of that id: acme's does not exist for it
    assert other_tenant.code() == grpc.StatusCode.NOT_FOUND and "publications/smile-api" in other_tenant.details()


def test_the_tenants_key_gets_the_models_logits_through_the_coordinator(stack):
    acme, globex, models, _, _, _ = stack
    images = np.random.default_rng(1).random((70, 3, 32, 32), dtype=np.float32)  # 70: two Triton calls
    logits = acme.predict("publications/smile-api", images)
    assert logits.shape == (70, 2)
    np.testing.assert_allclose(logits, in_process(models["acme"], images), rtol=0, atol=1e-4)

    # Ids are per tenant: globex's own publication of the same id runs globex's model, for globex's key only.
    assert globex.publish("smile-api", "smile").served_model_name == "globex.smile-api"
    np.testing.assert_allclose(globex.predict("publications/smile-api", images[:5]),
                               in_process(models["globex"], images[:5]), rtol=0, atol=1e-4)
    np.testing.assert_allclose(acme.predict("publications/smile-api", images[:5]),
                               in_process(models["acme"], images[:5]), rtol=0, atol=1e-4)


def test_the_cli_and_the_sdk_predict_through_the_coordinator_with_the_tenants_key(stack, tmp_path):
    acme, globex, _, _, target, _ = stack
    from umbra.dataset import synthetic

    faces = synthetic.write_folder(tmp_path / "faces", 3, size=48, seed=2)  # resized to the model's 32 px
    published = inference.Published(open_channel(target, acme.key), "smile-api")
    assert published.image_size == 32
    env = dict(os.environ, UMBRA_ENDPOINT=target, UMBRA_API_KEY=acme.key)
    out = subprocess.run([sys.executable, "-m", "umbra.cli.main", "models", "predict", str(faces / "images"),
                          "--model", "acme.smile-api", "--classes", "no,yes", "--json"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(out.stdout)
    assert len(rows) == 3 and {r["class"] for r in rows} <= {"no", "yes"}
    for model, says in (("nothing-here", "NOT_FOUND"), ("acme.smile-api", "not one of your publications")):
        refused = subprocess.run([sys.executable, "-m", "umbra.cli.main", "models", "predict",
                                  str(faces / "images"), "--model", model], capture_output=True, text=True,
                                 timeout=60, env=dict(env, UMBRA_API_KEY=globex.key))  # globex's key
        assert refused.returncode != 0 and says in refused.stderr and model in refused.stderr, refused.stderr


def test_bad_inputs_are_refused_by_field(stack):
    acme, _, _, _, _, _ = stack
    good = np.zeros((2, 3, 32, 32), np.float32)
    cases = [(ms.PredictRequest(name="smile-api", inputs=tensor(good)), "name"),
             (ms.PredictRequest(name="publications/smile-api", inputs=tensor(good[:, 0])), "inputs.shape"),
             (ms.PredictRequest(name="publications/smile-api",
                                inputs=ms.Tensor(shape=[0, 3, 32, 32])), "inputs.shape"),
             (ms.PredictRequest(name="publications/smile-api",
                                inputs=ms.Tensor(shape=[2, 3, 32, 32], float32_data=b"\0" * 12)),
              "inputs.float32_data"),
             (ms.PredictRequest(name="publications/smile-api", inputs=tensor(np.zeros((1, 3, 64, 64), np.float32))),
              "inputs")]  # the model's image size is 32: Triton's refusal, by field
    for request, field in cases:
        err = acme.refused(request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert status_details(err)["metadata"]["field"] == field, err.details()
    missing = acme.refused(ms.PredictRequest(name="publications/nothing-here", inputs=tensor(good)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_a_deleted_tenants_model_is_no_longer_served(stack):
    _, _, _, url, target, store = stack
    key = create_tenant(target, "initech")
    write_model(store, "initech", "smile", 3)
    initech = Caller(target, key)
    published = initech.publish("smile-api", "smile")
    assert inference.readiness(url, [published.served_model_name]) == {published.served_model_name: True}

    admin = tenant_service_pb2_grpc.TenantServiceStub(open_channel(target, ADMIN_KEY))
    admin.DeleteTenant(tenant_service_pb2.DeleteTenantRequest(name="tenants/initech"), timeout=30)
    assert publications.list_tenant(store, "initech", None, 10) == []  # withdrawn in the same step
    assert publications.wait_until_withdrawn(url, published.served_model_name, timeout=30)  # Triton unloaded it
    request = ms.PredictRequest(name="publications/smile-api", inputs=tensor(np.zeros((2, 3, 32, 32), np.float32)))
    assert initech.refused(request).code() == grpc.StatusCode.UNAUTHENTICATED
