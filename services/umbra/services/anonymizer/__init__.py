"""The anonymizer service: trains the DP conditional diffusion generator (umbra.anonymization.generator_training)
and anonymizes faces with it (umbra.anonymization), charging every cost to the coordinator's privacy ledger first;
and measures what released faces still give away, for the protection job's previews and report (audit)."""

from __future__ import annotations

from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.services.anonymizer.servicer import AnonymizerServicer
from umbra.services.ledger_client import LedgerClient
from umbra.storage import open_store


def build(runtime: Runtime) -> Built:
    config = runtime.config
    ledger = LedgerClient(config.coordinator_url, config.service_token, commit_patience=config.ledger_commit_seconds)
    servicer = AnonymizerServicer(open_store(config.store), runtime.operations, ledger)
    return Built(
        registrations=[registration(an, anonymizer_service_pb2_grpc, "AnonymizerService", servicer)],
        authenticator=ServiceAuthenticator(config.service_token),
    )


SPEC = ServiceSpec(name="anonymizer", build=build)
