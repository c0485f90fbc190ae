"""The distortion service's protobuf conversions (the only place its messages and umbra.mdp meet)."""

from __future__ import annotations

from umbra.common.v1 import refs_pb2
from umbra.distortion.v1 import distortion_service_pb2 as ds
from umbra.mdp import release
from umbra.runtime.errors import InvalidInput

_POLICIES = {ds.START_POLICY_UNSPECIFIED: "random_other_class",
             ds.START_POLICY_RANDOM_OTHER_CLASS: "random_other_class"}


def settings_from_proto(request: ds.DistortDatasetRequest) -> release.Settings:
    """The request's settings with the documented defaults for zero; copies has none (0 is refused)."""
    if request.start_policy not in _POLICIES:
        raise InvalidInput("start_policy", "is not a known start-image policy")
    defaults = release.Settings()
    return release.Settings(copies=request.copies, steps=request.steps or defaults.steps,
                            step_size=request.step_size or defaults.step_size, momentum=request.momentum,
                            batch_size=request.batch_size or defaults.batch_size, seed=request.seed,
                            start_policy=_POLICIES[request.start_policy]).validate()


def result_to_proto(job: release.Job, result: release.Result) -> ds.DistortionResult:
    dataset, number = job.output
    return ds.DistortionResult(
        released=refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=number),
        record=refs_pb2.ObjectRef(bucket=job.bucket, key=result.record_key), feature_loss=result.feature_loss,
        image_count=result.samples, unlabelled_skipped=result.unlabelled)
