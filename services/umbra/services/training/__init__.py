"""The training service: plain and DP-SGD classifiers, the model registry, and publishing model versions to the
inference server (Triton)."""

from __future__ import annotations

from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.services.training.servicer import TrainingServicer
from umbra.storage import open_store
from umbra.training.v1 import training_service_pb2, training_service_pb2_grpc


def build(runtime: Runtime) -> Built:
    max_processes = runtime.config.training_max_processes  # UMBRA_TRAINING_MAX_PROCESSES
    servicer = TrainingServicer(open_store(runtime.config.store), runtime.operations,
                                 inference_url=runtime.config.inference_url, max_processes=max_processes)
    return Built(
        registrations=[registration(training_service_pb2, training_service_pb2_grpc, "TrainingService", servicer)],
        authenticator=ServiceAuthenticator(runtime.config.service_token),
    )


SPEC = ServiceSpec(name="training", build=build)
