"""The training service: plain and DP-SGD classifiers, the model registry, export to the inference server."""

from __future__ import annotations

from umbra.runtime.server import ServiceSpec
from umbra.runtime.unbuilt import not_built_yet
from umbra.services.workers import worker
from umbra.training.v1 import training_service_pb2, training_service_pb2_grpc


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    Train = not_built_yet("Train", "classifier training (plain and DP-SGD with Opacus)")
    Evaluate = not_built_yet("Evaluate", "model evaluation")
    GetModelVersion = not_built_yet("GetModelVersion", "the model registry")
    ListModelVersions = not_built_yet("ListModelVersions", "the model registry")
    DeleteModelVersion = not_built_yet("DeleteModelVersion", "the model registry")
    ExportModelVersion = not_built_yet("ExportModelVersion", "serving on Triton")


SPEC = ServiceSpec(
    name="training",
    build=worker(training_service_pb2, training_service_pb2_grpc, "TrainingService",
                 lambda runtime: TrainingServicer()),
)
