"""The anonymizer service: the DP conditional diffusion generator and attribute-level anonymization."""

from __future__ import annotations

from umbra.anonymizer.v1 import anonymizer_service_pb2, anonymizer_service_pb2_grpc
from umbra.runtime.server import ServiceSpec
from umbra.runtime.unbuilt import not_built_yet
from umbra.services.workers import worker


class AnonymizerServicer(anonymizer_service_pb2_grpc.AnonymizerServiceServicer):
    TrainGenerator = not_built_yet("TrainGenerator", "DP diffusion generator training")
    Anonymize = not_built_yet("Anonymize", "attribute-level anonymization")
    AnonymizeDataset = not_built_yet("AnonymizeDataset", "attribute-level anonymization")
    EstimatePrivacyCost = not_built_yet("EstimatePrivacyCost", "the intensity-to-epsilon table")


SPEC = ServiceSpec(
    name="anonymizer",
    build=worker(anonymizer_service_pb2, anonymizer_service_pb2_grpc, "AnonymizerService",
                 lambda runtime: AnonymizerServicer()),
)
