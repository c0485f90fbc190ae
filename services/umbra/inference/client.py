"""A small Triton gRPC client for the served classifiers: `predict(url, model, images)` returns the logits.

Imports only numpy and tritonclient (no torch), so the SDK can use it as is. Batches larger than the server's
`max_batch_size` are split into several calls; errors from the server (an unknown model, a wrong image size)
come back as `tritonclient.utils.InferenceServerException`, whose message says what went wrong.
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

MAX_BATCH_SIZE = 64  # the server's max_batch_size (umbra.inference.triton)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def predict(url: str, model_name: str, images: np.ndarray, timeout: float = 30.0) -> np.ndarray:
    """The logits (N, num_classes) float32 for `images`, float images in [0, 1] of shape (N, 3, H, W).

    `url` is the server's gRPC address ("host:port"); `timeout` (seconds) bounds each call to the server.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: nothing to predict")
    images = np.ascontiguousarray(images, dtype=np.float32)
    outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]
    client = grpcclient.InferenceServerClient(url)
    try:
        parts = []
        for start in range(0, images.shape[0], MAX_BATCH_SIZE):
            chunk = images[start:start + MAX_BATCH_SIZE]
            request = grpcclient.InferInput(INPUT_NAME, list(chunk.shape), "FP32")
            request.set_data_from_numpy(chunk)
            result = client.infer(model_name, [request], outputs=outputs, client_timeout=timeout)
            parts.append(result.as_numpy(OUTPUT_NAME))
    finally:
        client.close()
    return np.concatenate(parts)
