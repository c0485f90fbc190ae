"""The unlearning service: feature unlearning of a published model (first and second order)."""

from __future__ import annotations

from umbra.runtime.server import ServiceSpec
from umbra.runtime.unbuilt import not_built_yet
from umbra.services.workers import worker
from umbra.unlearning.v1 import unlearning_service_pb2, unlearning_service_pb2_grpc


class UnlearningServicer(unlearning_service_pb2_grpc.UnlearningServiceServicer):
    Unlearn = not_built_yet("Unlearn", "feature unlearning")


SPEC = ServiceSpec(
    name="unlearning",
    build=worker(unlearning_service_pb2, unlearning_service_pb2_grpc, "UnlearningService",
                 lambda runtime: UnlearningServicer()),
)
