"""Coordinator RPCs that are not built yet: they answer UNIMPLEMENTED and say so."""

from __future__ import annotations

from umbra.coordinator.v1 import job_service_pb2_grpc, model_service_pb2_grpc
from umbra.runtime.unbuilt import not_built_yet

_JOBS = "the protection job and its feedback loop"
_PUBLISHING = "publishing to the inference server"


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    CreateProtectionJob = not_built_yet("CreateProtectionJob", _JOBS)
    GetProtectionJob = not_built_yet("GetProtectionJob", _JOBS)
    ListProtectionJobs = not_built_yet("ListProtectionJobs", _JOBS)
    GetPreview = not_built_yet("GetPreview", _JOBS)
    SubmitFeedback = not_built_yet("SubmitFeedback", _JOBS)
    ListFeedbackRounds = not_built_yet("ListFeedbackRounds", _JOBS)
    GetReport = not_built_yet("GetReport", _JOBS)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    PublishModel = not_built_yet("PublishModel", _PUBLISHING)
    GetPublication = not_built_yet("GetPublication", _PUBLISHING)
    ListPublications = not_built_yet("ListPublications", _PUBLISHING)
    DeletePublication = not_built_yet("DeletePublication", _PUBLISHING)
