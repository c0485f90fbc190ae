"""A real Triton (PyTriton) started with an access token answers nothing but health without it: the restricted
protocols of umbra.inference.access, enforced by Triton itself; the coordinator's gateway, holding the token, gets
the model's logits."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from safetensors.torch import save_file

from umbra.classifiers.architectures import create
from umbra.classifiers.model_config import ModelConfig
from umbra.inference import access
from umbra.inference.gateway import Gateway
from umbra.inference.triton import InferenceServer, load_model_dir
from umbra.runtime.errors import FailedPrecondition, InvalidInput

pytestmark = pytest.mark.slow

TOKEN = access.access_token("test-service-token-0123456789")
CONFIG = ModelConfig("groupnorm_cnn", 2, 32, width=8)


def save_tiny_model(models) -> torch.nn.Module:
    """A seeded tiny model saved as models/tiny (config.json, weights.safetensors); returned in eval mode."""
    torch.manual_seed(0)
    model = create(CONFIG).eval()
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text(CONFIG.to_json())
    save_file(model.state_dict(), models / "tiny" / "weights.safetensors")
    return model


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[tuple[InferenceServer, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("acc")  # short: PyTriton's unix sockets live in the workspace
    model = save_tiny_model(root / "models")
    with InferenceServer(load_model_dir(root / "models"), root / "ws", access_token=TOKEN) as server:
        yield server, model


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, 32, 32), dtype=np.float32)


def test_the_token_is_derived_from_the_service_token():
    assert access.access_token("a" * 20) == access.access_token("a" * 20) != access.access_token("b" * 20)
    assert len(TOKEN) == 64 and int(TOKEN, 16) >= 0  # hex: nothing Triton's "<protocols>:<header>=<value>" misreads
    with pytest.raises(ValueError):
        access.access_token("")


@pytest.mark.parametrize("headers", [None, access.grpc_headers(access.access_token("another-token-0123456789"))],
                         ids=["no-token", "wrong-token"])
def test_grpc_without_the_token_is_refused_by_triton(guarded, headers):
    server, _ = guarded
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        batch = grpcclient.InferInput("images", [2, 3, 32, 32], "FP32")
        batch.set_data_from_numpy(images(2))
        for call in (lambda: client.infer("tiny", [batch], headers=headers),
                     lambda: client.get_model_metadata("tiny", headers=headers),
                     lambda: client.get_model_config("tiny", headers=headers),
                     lambda: client.get_model_repository_index(headers=headers),
                     lambda: client.get_inference_statistics(headers=headers),
                     lambda: client.unload_model("tiny", headers=headers)):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        assert client.is_server_live() and client.is_model_ready("tiny")  # health stays open (probes, readiness)
    finally:
        client.close()
    assert server.running and "tiny" in server.models  # the refused unload changed nothing


def test_http_without_the_token_is_refused_by_triton(guarded):
    server, _ = guarded
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        batch = httpclient.InferInput("images", [2, 3, 32, 32], "FP32")
        batch.set_data_from_numpy(images(2))
        with pytest.raises(InferenceServerException, match="restricted|403|Forbidden"):
            client.infer("tiny", [batch])
        with pytest.raises(InferenceServerException, match="restricted|403|Forbidden"):
            client.get_model_metadata("tiny")
        result = client.infer("tiny", [batch], headers={access.HEADER: TOKEN})
        assert result.as_numpy("logits").shape == (2, 2)
    finally:
        client.close()


def test_the_gateway_with_the_token_gets_the_models_logits(guarded):
    server, model = guarded
    gateway = Gateway(server.grpc_url, TOKEN)
    try:
        batch = images(70, seed=3)  # two calls to Triton
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(gateway.predict("tiny", batch, what="publications/tiny"), expected, rtol=0,
                                   atol=1e-4)
        with pytest.raises(FailedPrecondition, match="publications/nope"):
            gateway.predict("nope", batch[:1], what="publications/nope")
        with pytest.raises(InvalidInput) as err:
            gateway.predict("tiny", np.zeros((1, 3, 64, 64), np.float32), what="publications/tiny")
        assert err.value.metadata["field"] == "inputs" and "unexpected shape" in err.value.message
    finally:
        gateway.close()
