"""The unlearning service: feature unlearning of trained classifiers (umbra.feature_unlearning), verified on
request against retraining through the training service."""

from __future__ import annotations

from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.services.unlearning.servicer import UnlearningServicer
from umbra.storage import open_store
from umbra.unlearning.v1 import unlearning_service_pb2 as us
from umbra.unlearning.v1 import unlearning_service_pb2_grpc


def build(runtime: Runtime) -> Built:
    servicer = UnlearningServicer(open_store(runtime.config.store), runtime.operations,
                                  training_url=runtime.config.training_url,
                                  service_token=runtime.config.service_token)
    return Built(
        registrations=[registration(us, unlearning_service_pb2_grpc, "UnlearningService", servicer)],
        authenticator=ServiceAuthenticator(runtime.config.service_token),
    )


SPEC = ServiceSpec(name="unlearning", build=build)
