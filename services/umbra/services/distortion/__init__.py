"""The distortion service: MDP and AugMDP over a labelled dataset version (umbra.mdp)."""

from __future__ import annotations

from umbra.distortion.v1 import distortion_service_pb2 as ds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.services.distortion.servicer import DistortionServicer
from umbra.storage import open_store


def build(runtime: Runtime) -> Built:
    servicer = DistortionServicer(open_store(runtime.config.store), runtime.operations)
    return Built(
        registrations=[registration(ds, distortion_service_pb2_grpc, "DistortionService", servicer)],
        authenticator=ServiceAuthenticator(runtime.config.service_token),
    )


SPEC = ServiceSpec(name="distortion", build=build)
