"""The coordinator: Umbra's only public API. Callers present a tenant API key or the admin key.

Tenants and their API keys, datasets and their versions, the privacy ledger (which the workers charge with the
service credential), protection jobs (which call the anonymizer replicas, the unlearning and the distortion service
with the service credential) and the publication of models to the inference server.
"""

from __future__ import annotations

import logging
import threading

from umbra.coordinator.v1 import (
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    ledger_service_pb2,
    ledger_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from umbra.runtime.auth import TenantAuthenticator
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.runtime.sql import describe
from umbra.services.coordinator import versions
from umbra.services.coordinator.api_keys import ApiKeyStore
from umbra.services.coordinator.datasets import DatasetServicer
from umbra.services.coordinator.db import CoordinatorDB
from umbra.services.coordinator.locks import DatasetLocks
from umbra.privacy.ledger import PrivacyLedger
from umbra.services.coordinator.ledger import LedgerServicer
from umbra.services.coordinator.models import ModelServicer
from umbra.services.coordinator.job_leases import JobLeases, start_heartbeat
from umbra.services.coordinator.job_records import JobRecords
from umbra.services.coordinator.jobs import JobServicer
from umbra.services.coordinator.job_workers import JobWorkers
from umbra.services.coordinator.protection import ProtectionJobs
from umbra.services.coordinator.tenants import TenantServicer
from umbra.storage import open_store

log = logging.getLogger(__name__)

# The only coordinator RPCs a worker calls (with the service credential): charging the privacy ledger.
INTERNAL_METHODS = frozenset(f"/umbra.coordinator.v1.LedgerService/{rpc}" for rpc in (
    "ReservePrivacyCharge", "CommitPrivacyCharge", "ReleasePrivacyCharge"))


def build(runtime: Runtime) -> Built:
    config = runtime.config
    # One database for every replica (PostgreSQL), or the SQLite file of the one coordinator process.
    db = CoordinatorDB(config.database_url or config.data_dir / "coordinator.sqlite3", single_process=True)
    runtime.closers.append(db.close)
    log.info("coordinator database: %s, schema revision %s", describe(str(db.sql.engine.url.render_as_string(
        hide_password=False))), db.revision)
    api_keys = ApiKeyStore(db)
    api_keys.import_legacy(config.data_dir / "api_keys.sqlite3")  # a data folder from before keys lived in db
    store = open_store(config.store)
    if config.review_port:  # the review page (issue 27): its own HTTP port, in this process; imports it only then
        from umbra.services.coordinator import review
        runtime.closers.append(review.start(config, store))
    locks = DatasetLocks(db.sql)
    datasets = DatasetServicer(db, store, runtime.operations, locks, presign_seconds=config.presign_seconds)
    versions.recover(db, store, locks, config.upload_ttl_seconds)  # interrupted commits, abandoned uploads
    stop_sweeper = threading.Event()
    versions.start_sweeper(db, store, locks, config.upload_ttl_seconds, stop_sweeper)
    runtime.closers.append(stop_sweeper.set)
    ledger = PrivacyLedger(db.transaction)
    records = JobRecords(db)
    workers = JobWorkers(list(config.anonymizer_urls), config.unlearning_url, config.distortion_url,
                         config.service_token, wait_seconds=config.worker_wait_seconds)
    protection = ProtectionJobs(records, db, store, locks, workers, ledger)
    leases = JobLeases(db, seconds=config.job_lease_seconds)
    if not db.postgres:
        leases.forget_all()  # the SQLite file is this process's alone: every lease in it is a dead process's
    job_servicer = JobServicer(records, protection, store, ledger, runtime.operations, leases)
    job_servicer.resume_interrupted()  # jobs a graceful stop interrupted (a killed one resumes with its operation)
    stop_leases = threading.Event()
    # Renews this replica's leases, and takes over the jobs of a replica that stopped renewing its own.
    start_heartbeat(leases, stop_leases, on_lost=lambda tenant, job: None, on_expired=job_servicer.take_over,
                    on_cancel=job_servicer.cancel_here)
    runtime.closers.append(stop_leases.set)
    return Built(
        registrations=[
            registration(tenant_service_pb2, tenant_service_pb2_grpc, "TenantService",
                         TenantServicer(db, api_keys, store)),
            registration(dataset_service_pb2, dataset_service_pb2_grpc, "DatasetService", datasets),
            registration(job_service_pb2, job_service_pb2_grpc, "JobService", job_servicer),
            registration(ledger_service_pb2, ledger_service_pb2_grpc, "LedgerService", LedgerServicer(ledger)),
            registration(model_service_pb2, model_service_pb2_grpc, "ModelService",
                         ModelServicer(store, runtime.operations, inference_url=config.inference_url,
                                       service_token=config.service_token)),
        ],
        authenticator=TenantAuthenticator(api_keys, config.admin_key, config.service_token, INTERNAL_METHODS),
    )


SPEC = ServiceSpec(name="coordinator", build=build)
