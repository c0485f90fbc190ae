"""The coordinator: Umbra's only public API (tenants, datasets, protection jobs, the privacy ledger,
publishing). Callers present a tenant API key or the admin key."""

from __future__ import annotations

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
from umbra.runtime.auth import ApiKeyStore, TenantAuthenticator
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.runtime.unbuilt import not_built_yet

_TENANTS = "tenant management"
_DATASETS = "dataset storage"
_JOBS = "the protection job and its feedback loop"


class TenantServicer(tenant_service_pb2_grpc.TenantServiceServicer):
    CreateTenant = not_built_yet("CreateTenant", _TENANTS)
    GetTenant = not_built_yet("GetTenant", _TENANTS)
    ListTenants = not_built_yet("ListTenants", _TENANTS)
    UpdateTenant = not_built_yet("UpdateTenant", _TENANTS)
    DeleteTenant = not_built_yet("DeleteTenant", _TENANTS)
    CreateApiKey = not_built_yet("CreateApiKey", _TENANTS)
    ListApiKeys = not_built_yet("ListApiKeys", _TENANTS)
    RevokeApiKey = not_built_yet("RevokeApiKey", _TENANTS)


class DatasetServicer(dataset_service_pb2_grpc.DatasetServiceServicer):
    CreateDataset = not_built_yet("CreateDataset", _DATASETS)
    GetDataset = not_built_yet("GetDataset", _DATASETS)
    ListDatasets = not_built_yet("ListDatasets", _DATASETS)
    DeleteDataset = not_built_yet("DeleteDataset", _DATASETS)
    CreateDatasetVersion = not_built_yet("CreateDatasetVersion", _DATASETS)
    UploadDatasetChunk = not_built_yet("UploadDatasetChunk", _DATASETS)
    CommitDatasetVersion = not_built_yet("CommitDatasetVersion", _DATASETS)
    GetDatasetVersion = not_built_yet("GetDatasetVersion", _DATASETS)
    ListDatasetVersions = not_built_yet("ListDatasetVersions", _DATASETS)
    ExportDatasetVersion = not_built_yet("ExportDatasetVersion", _DATASETS)
    DownloadDatasetChunk = not_built_yet("DownloadDatasetChunk", _DATASETS)


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    CreateProtectionJob = not_built_yet("CreateProtectionJob", _JOBS)
    GetProtectionJob = not_built_yet("GetProtectionJob", _JOBS)
    ListProtectionJobs = not_built_yet("ListProtectionJobs", _JOBS)
    GetPreview = not_built_yet("GetPreview", _JOBS)
    SubmitFeedback = not_built_yet("SubmitFeedback", _JOBS)
    ListFeedbackRounds = not_built_yet("ListFeedbackRounds", _JOBS)
    GetReport = not_built_yet("GetReport", _JOBS)


class LedgerServicer(ledger_service_pb2_grpc.LedgerServiceServicer):
    GetPrivacyBalance = not_built_yet("GetPrivacyBalance", "the privacy ledger")
    ListLedgerEntries = not_built_yet("ListLedgerEntries", "the privacy ledger")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    PublishModel = not_built_yet("PublishModel", "publishing to the inference server")
    GetPublication = not_built_yet("GetPublication", "publishing to the inference server")
    ListPublications = not_built_yet("ListPublications", "publishing to the inference server")
    DeletePublication = not_built_yet("DeletePublication", "publishing to the inference server")


def build(runtime: Runtime) -> Built:
    keys = ApiKeyStore(runtime.config.data_dir / "api_keys.sqlite3")
    runtime.closers.append(keys.close)
    return Built(
        registrations=[
            registration(tenant_service_pb2, tenant_service_pb2_grpc, "TenantService", TenantServicer()),
            registration(dataset_service_pb2, dataset_service_pb2_grpc, "DatasetService", DatasetServicer()),
            registration(job_service_pb2, job_service_pb2_grpc, "JobService", JobServicer()),
            registration(ledger_service_pb2, ledger_service_pb2_grpc, "LedgerService", LedgerServicer()),
            registration(model_service_pb2, model_service_pb2_grpc, "ModelService", ModelServicer()),
        ],
        authenticator=TenantAuthenticator(keys, runtime.config.admin_key),
    )


SPEC = ServiceSpec(name="coordinator", build=build)
