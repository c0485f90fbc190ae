"""Inference through a real Triton Inference Server (PyTriton): the same logits as the model in process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tritonclient.utils import InferenceServerException

from umbra.classifiers.model_config import ModelConfig
from umbra.client.inference import predict
from umbra.inference.triton import InferenceServer, load_model_dir, load_served_model
from umbra.classifiers.architectures import create

pytestmark = pytest.mark.slow

CONFIG = ModelConfig("groupnorm_cnn", 2, 32, width=8)


def save_tiny_model(models: Path) -> torch.nn.Module:
    """A seeded tiny model saved as models/tiny (config.json, weights.safetensors); returned in eval mode."""
    torch.manual_seed(0)
    model = create(CONFIG).eval()
    folder = models / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(CONFIG.to_json())
    save_file(model.state_dict(), folder / "weights.safetensors")
    return model


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection in TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[InferenceServer, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("triton")  # short: PyTriton's unix sockets live in the workspace
    model = save_tiny_model(root / "models")
    with InferenceServer(load_model_dir(root / "models"), root / "ws") as server:
        yield server, model


@pytest.mark.parametrize("count", [5, 70])  # 70: more than max_batch_size, split over two calls
def test_logits_match_the_model_in_process(served, count):
    server, model = served
    images = np.random.default_rng(count).random((count, 3, 32, 32), dtype=np.float32)
    logits = predict(server.grpc_url, "tiny", images)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    assert logits.shape == (count, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_unknown_model_is_a_clear_error(served):
    server, _ = served
    with pytest.raises(InferenceServerException, match="unknown model.*'nope'"):
        predict(server.grpc_url, "nope", np.zeros((1, 3, 32, 32), np.float32))


def test_wrong_image_size_is_a_clear_error(served):
    server, _ = served
    with pytest.raises(InferenceServerException, match=r"unexpected shape.*\[-1,3,32,32\]"):
        predict(server.grpc_url, "tiny", np.zeros((1, 3, 64, 64), np.float32))


def test_bad_images_are_refused_before_any_call(served):
    server, _ = served
    with pytest.raises(ValueError, match="shape"):
        predict(server.grpc_url, "tiny", np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="empty"):
        predict(server.grpc_url, "tiny", np.zeros((0, 3, 32, 32), np.float32))


def test_stops_cleanly_and_frees_its_ports(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    save_tiny_model(root / "models")
    server = InferenceServer([load_served_model("tiny", root / "models" / "tiny")], root / "ws")
    ports = [server.grpc_port, server.http_port, server.metrics_port]
    server.start()
    try:
        assert server.running and not any(port_is_free(p) for p in ports)
    finally:
        server.stop()
    assert not server.running
    assert all(port_is_free(p) for p in ports)
    assert not server.workspace.exists()
    server.stop()  # twice is fine


def test_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'empty'.*config\.json is missing"):
        load_served_model("empty", tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(CONFIG.to_json())
    with pytest.raises(FileNotFoundError, match=r"weights\.safetensors is missing"):
        load_served_model("empty", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_model_dir(tmp_path / "empty")


def test_a_busy_port_is_named_at_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("busy")
    save_tiny_model(root / "models")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = InferenceServer(load_model_dir(root / "models"), root / "ws", grpc_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"grpc port \d+ already in use"):
            server.start()
    assert not server.running
