"""Publishing through the coordinator's public ModelService, with every part real: the coordinator over gRPC with
tenant API keys, the inference server (`python -m umbra.inference.triton --store`, a real Triton) watching the
same object store, tritonclient calls, and `umbra models publish|publications|withdraw`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import grpc
import numpy as np
import pytest
import torch
from tritonclient.utils import InferenceServerException

from support import create_tenant, free_port, start_service, status_details
from umbra.classifiers.architectures import create
from umbra.classifiers.model_config import ModelConfig
from umbra.classifiers.registry import ModelRegistry
from umbra.client import inference
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import model_service_pb2 as ms
from umbra.coordinator.v1 import model_service_pb2_grpc
from umbra.storage.local import LocalObjectStore

pytestmark = pytest.mark.slow

CONFIG = ModelConfig("groupnorm_cnn", 2, 32, classes=["0", "1"], width=8)


def write_model(store, tenant: str, model: str, seed: int, config: ModelConfig = CONFIG) -> torch.nn.Module:
    """A small real (untrained, seeded) classifier as the training service leaves one; returned in eval mode."""
    torch.manual_seed(seed)
    net = create(CONFIG).eval()  # the weights of CONFIG even when `config` says otherwise (a broken version)
    ModelRegistry(store).write(f"umbra-{tenant}", model, config, net.state_dict(),
                               {"task": "gender", "classes": ["0", "1"], "dataset": {"dataset": "datasets/faces"}})
    return net


class Tenant:
    def __init__(self, target: str, key: str):
        self.key = key
        channel = open_channel(target, key)
        self.stub = model_service_pb2_grpc.ModelServiceStub(channel)
        self.operations = OperationsClient(channel)

    def start(self, publication_id: str, model: str, version: int, request_id: str = "") -> str:
        return self.stub.PublishModel(ms.PublishModelRequest(
            publication_id=publication_id, model=refs_pb2.ModelRef(model=f"models/{model}", version=version),
            request_id=request_id), timeout=30).operation.name

    def publish(self, publication_id: str, model: str, version: int, request_id: str = "") -> ms.Publication:
        name = self.start(publication_id, model, version, request_id)
        return self.operations.result(name, ms.Publication, timeout=120, poll_seconds=0.5)

    def get(self, publication_id: str) -> ms.Publication:
        return self.stub.GetPublication(ms.GetPublicationRequest(name=f"publications/{publication_id}"),
                                        timeout=30).publication

    def refused(self, method: str, request) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as err:
            getattr(self.stub, method)(request, timeout=60)
        return err.value


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("msv")  # short: PyTriton's unix sockets live in the workspace
    store = LocalObjectStore(home / "objects")
    port = free_port()
    env = dict(os.environ, UMBRA_STORE="local", UMBRA_STORE_DIR=str(home / "objects"), UMBRA_HOME=str(home))
    log = open(home / "triton.log", "wb")
    triton = subprocess.Popen(
        [sys.executable, "-m", "umbra.inference.triton", "--store", "--grpc-port", str(port), "--poll-seconds",
         "0.5", "--workspace", str(home / "ws")], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    coordinator = start_service("coordinator", home, "acme", UMBRA_STORE_DIR=str(home / "objects"),
                                UMBRA_INFERENCE_URL=url)
    globex_key = create_tenant(coordinator.target, "globex")
    models = {("smile", 1): write_model(store, "acme", "smile", 1),
              ("smile", 2): write_model(store, "acme", "smile", 2),
              ("glasses", 1): write_model(store, "acme", "glasses", 3),
              ("other", 1): write_model(store, "globex", "other", 4)}
    try:
        yield (Tenant(coordinator.target, coordinator.credential), Tenant(coordinator.target, globex_key), store,
               url, coordinator, models)
    finally:
        coordinator.running.stop(grace=0)
        triton.terminate()
        triton.wait(timeout=30)
        log.close()


def expected_logits(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(images)).numpy()


def test_publish_get_list_query_and_withdraw(stack):
    acme, _, _, url, _, models = stack
    request_id = str(uuid.uuid4())
    first = acme.start("smile-api", "smile", 1, request_id)
    assert acme.start("smile-api", "smile", 1, request_id) == first  # a retry returns the same operation
    published = acme.operations.result(first, ms.Publication, timeout=120, poll_seconds=0.5)
    assert published.name == "publications/smile-api" and published.served_model_name == "acme.smile-api"
    assert published.endpoint == url and published.state == ms.Publication.STATE_SERVING
    assert published.model == refs_pb2.ModelRef(model="models/smile", version=1)
    assert published.create_time.seconds > 0

    images = np.random.default_rng(0).random((70, 3, 32, 32), dtype=np.float32)  # 70: two batches
    np.testing.assert_allclose(inference.predict(url, published.served_model_name, images),
                               expected_logits(models["smile", 1], images), atol=1e-4)
    assert acme.get("smile-api") == published

    acme.publish("glasses-api", "glasses", 1)
    acme.publish("smile-v2", "smile", 2)
    first_page = acme.stub.ListPublications(ms.ListPublicationsRequest(page_size=2), timeout=30)
    assert [p.name for p in first_page.publications] == ["publications/glasses-api", "publications/smile-api"]
    assert first_page.next_page_token
    second_page = acme.stub.ListPublications(ms.ListPublicationsRequest(
        page_size=2, page_token=first_page.next_page_token), timeout=30)
    assert [p.name for p in second_page.publications] == ["publications/smile-v2"]
    assert not second_page.next_page_token
    assert all(p.state == ms.Publication.STATE_SERVING and p.endpoint == url
               for p in [*first_page.publications, *second_page.publications])

    withdrawal = str(uuid.uuid4())
    acme.stub.DeletePublication(ms.DeletePublicationRequest(name="publications/smile-api", request_id=withdrawal),
                                timeout=60)  # returns once Triton no longer serves it
    assert inference.readiness(url, ["acme.smile-api"]) == {"acme.smile-api": False}
    with pytest.raises(InferenceServerException):
        inference.predict(url, "acme.smile-api", images[:1])
    assert acme.refused("GetPublication", ms.GetPublicationRequest(name="publications/smile-api")).code() == \
        grpc.StatusCode.NOT_FOUND
    acme.stub.DeletePublication(ms.DeletePublicationRequest(name="publications/smile-api", request_id=withdrawal),
                                timeout=60)  # a retry of the withdrawal answers as the first did
    assert acme.refused("DeletePublication", ms.DeletePublicationRequest(name="publications/smile-api")).code() == \
        grpc.StatusCode.NOT_FOUND
    listed = acme.stub.ListPublications(ms.ListPublicationsRequest(), timeout=30).publications
    assert [p.name for p in listed] == ["publications/glasses-api", "publications/smile-v2"]
    assert inference.readiness(url, ["acme.glasses-api", "acme.smile-v2"]) == {"acme.glasses-api": True,
                                                                                "acme.smile-v2": True}
    np.testing.assert_allclose(inference.predict(url, "acme.smile-v2", images[:5]),  # the others still answer
                               expected_logits(models["smile", 2], images[:5]), atol=1e-4)

    # Once withdrawn, the id is free again, also for another version: Triton loads the new weights under it.
    again = acme.publish("smile-api", "smile", 2)
    assert again.model.version == 2 and again.served_model_name == "acme.smile-api"
    np.testing.assert_allclose(inference.predict(url, "acme.smile-api", images[:5]),
                               expected_logits(models["smile", 2], images[:5]), atol=1e-4)


def test_bad_requests_are_refused_by_field(stack):
    acme, globex, _, _, _, _ = stack
    request_id = str(uuid.uuid4())
    acme.publish("glasses-one", "glasses", 1, request_id)

    def publish_refused(publication_id="fresh-id", model="models/glasses", version=1, request_id=""):
        return acme.refused("PublishModel", ms.PublishModelRequest(
            publication_id=publication_id, model=refs_pb2.ModelRef(model=model, version=version),
            request_id=request_id))

    for err, field in [(publish_refused(publication_id="Not A Name"), "publication_id"),
                       (publish_refused(publication_id=""), "publication_id"),
                       (publish_refused(model="glasses"), "model"),
                       (publish_refused(model="models/Bad_Name"), "model.model"),
                       (publish_refused(version=0), "model"),
                       (publish_refused(request_id="x" * 201), "request_id"),
                       (acme.refused("GetPublication", ms.GetPublicationRequest(name="glasses-one")), "name"),
                       (acme.refused("GetPublication", ms.GetPublicationRequest(name="publications/a/b")), "name"),
                       (acme.refused("DeletePublication", ms.DeletePublicationRequest(name="models/x")), "name"),
                       (acme.refused("ListPublications", ms.ListPublicationsRequest(page_size=-1)), "page_size"),
                       (acme.refused("ListPublications", ms.ListPublicationsRequest(page_token="nope")),
                        "page_token")]:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert status_details(err)["metadata"]["field"] == field, err.details()

    unknown = publish_refused(model="models/glasses", version=9)
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "models/glasses/versions/9" in unknown.details()

    # The id is taken: by the same version (a second request) or another one; only a retry of the first passes.
    for err in (publish_refused(publication_id="glasses-one", request_id=str(uuid.uuid4())),
                publish_refused(publication_id="glasses-one"),
                publish_refused(publication_id="glasses-one", model="models/smile", request_id=request_id + "-2")):
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
        assert status_details(err)["metadata"]["field"] == "publication_id"
    assert "models/glasses/versions/1" in publish_refused(publication_id="glasses-one", model="models/smile").details()
    assert acme.publish("glasses-one", "glasses", 1, request_id).name == "publications/glasses-one"

    # Another tenant's publications and models do not exist for a tenant; ids are per tenant.
    for method, request in [("GetPublication", ms.GetPublicationRequest(name="publications/glasses-one")),
                            ("DeletePublication", ms.DeletePublicationRequest(name="publications/glasses-one")),
                            ("PublishModel", ms.PublishModelRequest(
                                publication_id="stolen", model=refs_pb2.ModelRef(model="models/glasses", version=1)))]:
        assert globex.refused(method, request).code() == grpc.StatusCode.NOT_FOUND, method
    own = globex.publish("glasses-one", "other", 1)
    assert own.served_model_name == "globex.glasses-one" and own.state == ms.Publication.STATE_SERVING
    assert [p.name for p in globex.stub.ListPublications(ms.ListPublicationsRequest(), timeout=30).publications] == \
        ["publications/glasses-one"]
    assert acme.get("glasses-one").model == refs_pb2.ModelRef(model="models/glasses", version=1)


def test_a_version_the_inference_server_cannot_load_fails_and_can_be_withdrawn(stack):
    acme, _, store, url, _, _ = stack
    write_model(store, "acme", "broken", 5, ModelConfig("groupnorm_cnn", 2, 32, classes=["0", "1"], width=16))
    name = acme.start("broken-api", "broken", 1)
    with pytest.raises(OperationFailed) as err:
        acme.operations.result(name, ms.Publication, timeout=120, poll_seconds=0.5)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "acme.broken-api" in err.value.message and "do not fit" in err.value.message
    assert acme.get("broken-api").state == ms.Publication.STATE_FAILED
    acme.stub.DeletePublication(ms.DeletePublicationRequest(name="publications/broken-api"), timeout=60)
    assert acme.refused("GetPublication", ms.GetPublicationRequest(name="publications/broken-api")).code() == \
        grpc.StatusCode.NOT_FOUND


def test_cli_publishes_lists_and_withdraws(stack):
    acme, _, _, url, coordinator, _ = stack
    env = dict(os.environ, UMBRA_ENDPOINT=coordinator.target, UMBRA_API_KEY=acme.key)

    def umbra(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "umbra.cli.main", "models", *args], env=env,
                              capture_output=True, text=True, timeout=180)

    published = umbra("publish", "models/glasses/versions/1", "--id", "glasses-cli")
    assert published.returncode == 0, published.stderr
    assert f"publications/glasses-cli: acme.glasses-cli served at {url}" in published.stdout
    listed = umbra("publications")
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.startswith("publications/glasses-cli "))
    assert "acme.glasses-cli" in line and "models/glasses/versions/1" in line and "serving" in line
    withdrawn = umbra("withdraw", "glasses-cli")
    assert withdrawn.returncode == 0 and "publications/glasses-cli withdrawn" in withdrawn.stdout, withdrawn.stderr
    assert inference.readiness(url, ["acme.glasses-cli"]) == {"acme.glasses-cli": False}
    missing = umbra("withdraw", "glasses-cli")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    bad = umbra("publish", "glasses", "--id", "x-cli")
    assert bad.returncode != 0 and "models/<model>/versions/<n>" in bad.stderr


def test_publishing_without_an_inference_server_is_a_failed_precondition(tmp_path):
    coordinator = start_service("coordinator", tmp_path, "acme")
    try:
        acme = Tenant(coordinator.target, coordinator.credential)
        err = acme.refused("PublishModel", ms.PublishModelRequest(
            publication_id="some-api", model=refs_pb2.ModelRef(model="models/some-model", version=1)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "UMBRA_INFERENCE_URL" in err.details()
        assert not acme.stub.ListPublications(ms.ListPublicationsRequest(), timeout=30).publications
    finally:
        coordinator.running.stop(grace=0)
