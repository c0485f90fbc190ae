"""The coordinator's way to the inference server: ModelService.Predict checks the tenant's key and resolves the
tenant's publication, then calls `Gateway.predict` with its Triton name.

One Gateway per coordinator process holds one tritonclient connection (a gRPC channel, thread-safe for unary
calls, so every RPC thread shares it) and sends the access token (umbra.inference.access) with each call.
Triton's answers become Umbra's errors here, so the servicer stays thin:

    the model is not loaded (yet, or any more)       FailedPrecondition PUBLICATION_NOT_SERVING
    images of the wrong size                         InvalidInput on `inputs`
    unreachable, or the access token refused         Unavailable (the token case is logged: a deployment error)
"""

from __future__ import annotations

import logging

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from umbra.client.inference import INPUT_NAME, MAX_BATCH_SIZE, OUTPUT_NAME
from umbra.inference import access
from umbra.runtime.errors import FailedPrecondition, InvalidInput, Unavailable

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds for one call to Triton when the caller set no deadline


class Gateway:
    """Calls the inference server at `url` ("host:port") with `token` (access.access_token of the service token)."""

    def __init__(self, url: str, token: str):
        self.url = url
        self._headers = access.grpc_headers(token)
        self._client = grpcclient.InferenceServerClient(url)  # connects on first use, reconnects by itself
        self._outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]

    def predict(self, triton_name: str, images: np.ndarray, *, what: str, timeout: float | None = None) -> np.ndarray:
        """The logits (N, classes) float32 of `triton_name` for float32 `images` (N, 3, H, W), in calls of at most
        the server's max_batch_size; `what` names the publication in errors; `timeout` bounds each call."""
        parts = []
        for start in range(0, images.shape[0], MAX_BATCH_SIZE):
            chunk = images[start:start + MAX_BATCH_SIZE]
            tensor = grpcclient.InferInput(INPUT_NAME, list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(chunk)
            try:
                result = self._client.infer(triton_name, [tensor], outputs=self._outputs, headers=self._headers,
                                            client_timeout=timeout or DEFAULT_TIMEOUT)
            except InferenceServerException as e:
                raise self._error(e, triton_name, what) from None
            parts.append(result.as_numpy(OUTPUT_NAME))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _error(self, e: InferenceServerException, triton_name: str, what: str) -> Exception:
        status, message = str(e.status() or ""), e.message() or ""
        if status.endswith("NOT_FOUND"):
            return FailedPrecondition(f"{what} is published but the inference server does not serve it now (see its "
                                      f"state with GetPublication)", reason="PUBLICATION_NOT_SERVING")
        if status.endswith("INVALID_ARGUMENT"):
            return InvalidInput("inputs", message.split(". NOTE:")[0].replace("[request id: <id_unknown>] ", ""))
        if "restricted" in message:
            logger.error("the inference server at %s refused the coordinator's access token: it and the "
                         "coordinator must start with the same UMBRA_SERVICE_TOKEN", self.url)
            return Unavailable(f"the inference server refused the call for {what}")
        if status.endswith("DEADLINE_EXCEEDED"):
            return Unavailable(f"the inference server did not answer for {what} in time")
        logger.warning("inference for %s failed: %s %s", triton_name, status, message)
        return Unavailable(f"the inference server did not answer for {what}: {message[:200]}")

    def close(self) -> None:
        self._client.close()
