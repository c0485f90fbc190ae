"""The distortion service: Mapping Distortion based Protection (MDP) and AugMDP."""

from __future__ import annotations

from umbra.distortion.v1 import distortion_service_pb2, distortion_service_pb2_grpc
from umbra.runtime.server import ServiceSpec
from umbra.runtime.unbuilt import not_built_yet
from umbra.services.workers import worker


class DistortionServicer(distortion_service_pb2_grpc.DistortionServiceServicer):
    DistortDataset = not_built_yet("DistortDataset", "MDP / AugMDP")


SPEC = ServiceSpec(
    name="distortion",
    build=worker(distortion_service_pb2, distortion_service_pb2_grpc, "DistortionService",
                 lambda runtime: DistortionServicer()),
)
