"""The SDK's clients for published classifiers.

- `Published(channel, "publications/gender")`: through the coordinator's ModelService.Predict with the tenant's
  API key (the channel's credential): the way for tenants, and the only one where the inference server is locked
  (UMBRA_SERVICE_TOKEN set: it answers only the coordinator). Errors are UmbraRpcError, naming the field.
- `Classifier(url, "acme.gender")` / `predict(url, model, images)`: straight to Triton over gRPC with tritonclient,
  for an inference server that is not locked (a single-user machine) or for Umbra's own services. Errors from the
  server (an unknown model, a wrong image size) come back as `tritonclient.utils.InferenceServerException`.

Imports only numpy, grpc and tritonclient (no torch). Batches larger than the server's `max_batch_size` are split
into several calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MAX_BATCH_SIZE = 64  # the server's max_batch_size (umbra.inference.triton)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class Classifier:
    """A published classifier on the inference server, over one gRPC connection (reuse it for many calls):

        with Classifier("127.0.0.1:8001", "acme.gender") as model:
            logits = model.predict(images)
    """

    def __init__(self, url: str, model_name: str, timeout: float = 30.0):
        self.url, self.model_name, self.timeout = url, model_name, timeout
        self._client = grpcclient.InferenceServerClient(url)
        self._outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The logits (N, num_classes) float32 for `images`, float images in [0, 1] of shape (N, 3, H, W)."""
        images = _checked(images)
        parts = []
        for start in range(0, images.shape[0], MAX_BATCH_SIZE):
            chunk = images[start:start + MAX_BATCH_SIZE]
            request = grpcclient.InferInput(INPUT_NAME, list(chunk.shape), "FP32")
            request.set_data_from_numpy(chunk)
            result = self._client.infer(self.model_name, [request], outputs=self._outputs,
                                        client_timeout=self.timeout)
            parts.append(result.as_numpy(OUTPUT_NAME))
        return np.concatenate(parts)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *_) -> None:
        self.close()


class Published:
    """A publication of the calling tenant, run through the coordinator (ModelService.Predict):

        with open_channel(coordinator, api_key) as channel:
            model = Published(channel, "publications/gender")
            logits = model.predict(model.load(paths))  # or any float32 (N, 3, size, size) in [0, 1]
    """

    def __init__(self, channel, name: str, timeout: float = 60.0):
        from umbra.client.operations import call
        from umbra.coordinator.v1 import model_service_pb2 as ms
        from umbra.coordinator.v1 import model_service_pb2_grpc

        self.name = name if name.startswith("publications/") else f"publications/{name}"
        self.timeout, self._ms, self._call = timeout, ms, call
        self._stub = model_service_pb2_grpc.ModelServiceStub(channel)
        self.publication = call(self._stub.GetPublication, ms.GetPublicationRequest(name=self.name), timeout=timeout)\
            .publication

    @property
    def image_size(self) -> int:
        """The image side (pixels) the published model takes."""
        return self.publication.image_size

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The logits (N, num_classes) float32 for `images`, float images in [0, 1] of shape (N, 3, H, W)."""
        images = _checked(images)
        parts = []
        for start in range(0, images.shape[0], MAX_BATCH_SIZE):
            chunk = images[start:start + MAX_BATCH_SIZE]
            request = self._ms.PredictRequest(name=self.name, inputs=self._ms.Tensor(
                shape=chunk.shape, float32_data=chunk.astype("<f4", copy=False).tobytes()))
            outputs = self._call(self._stub.Predict, request, timeout=self.timeout).outputs
            parts.append(np.frombuffer(outputs.float32_data, dtype="<f4").reshape(tuple(outputs.shape)))
        return np.concatenate(parts)


def _checked(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: nothing to predict")
    return np.ascontiguousarray(images, dtype=np.float32)


def predict(url: str, model_name: str, images: np.ndarray, timeout: float = 30.0) -> np.ndarray:
    """One-off: the logits of `images` from `model_name` at `url` ("host:port"); `timeout` (seconds) bounds each
    call to the server. Use `Classifier` for repeated calls."""
    with Classifier(url, model_name, timeout) as model:
        return model.predict(images)


def input_size(url: str, model_name: str, timeout: float = 10.0) -> int:
    """The image side (pixels) that a served model takes, read from the server's model metadata."""
    client = grpcclient.InferenceServerClient(url)
    try:
        metadata = client.get_model_metadata(model_name, as_json=True, client_timeout=timeout)
    finally:
        client.close()
    for tensor in metadata.get("inputs", []):
        if tensor.get("name") == INPUT_NAME:
            return int(tensor["shape"][-1])
    raise ValueError(f"model {model_name!r} on {url} has no input named {INPUT_NAME!r}: not an Umbra classifier")


def wait_until_ready(url: str, model_name: str, timeout: float = 60.0) -> bool:
    """True once the server at `url` answers that `model_name` is ready; False if it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    client = grpcclient.InferenceServerClient(url)
    try:
        while True:
            try:
                if client.is_model_ready(model_name, client_timeout=2.0):
                    return True
            except InferenceServerException:
                pass  # not up yet, or not reachable yet
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)
    finally:
        client.close()


def readiness(url: str, model_names: Iterable[str], timeout: float = 2.0) -> dict[str, bool] | None:
    """For each model name, whether the server at `url` serves it now (over one connection); None when the server
    does not answer. `timeout` (seconds) bounds each call."""
    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            if not client.is_server_live(client_timeout=timeout):
                return None
        except InferenceServerException:
            return None
        answers = {}
        for name in model_names:
            try:
                answers[name] = bool(client.is_model_ready(name, client_timeout=timeout))
            except InferenceServerException:
                answers[name] = False  # a model the server does not know
        return answers
    finally:
        client.close()
