"""Protection jobs from Python: build a job's spec and start it.

    from umbra.client import Client
    from umbra.client.jobs import create_protection_job, protection_job_spec

    with Client() as client:
        spec = protection_job_spec(dataset="faces", version=1, protect=["gender"], keep=["skin_tone"],
                                   policy="policy.yaml", review="automatic")
        op = create_protection_job(client.jobs, "protect-faces", spec)      # the job's long-running operation

`policy` is a file path (YAML or JSON), a dict or a `ReleasePolicy` (see `umbra.client.policy`); `review` is
"person" (the default: someone answers each round) or "automatic" (the coordinator answers by the policy, which
it then needs).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

from google.longrunning import operations_proto_pb2 as lro

from umbra.client.operations import call
from umbra.client.policy import PolicyError, load_policy
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js

REVIEWS = {"person": js.REVIEW_PERSON, "automatic": js.REVIEW_AUTOMATIC}


def model_ref(text: str) -> refs_pb2.ModelRef:
    """'faces-gen:1' (MODEL:VERSION) as a ModelRef; ValueError otherwise."""
    model, _, version = text.partition(":")
    if not model or not (version.isascii() and version.isdigit()):
        raise ValueError(f"{text!r}: write it as MODEL:VERSION, e.g. faces-gen:1")
    return refs_pb2.ModelRef(model=f"models/{model}", version=int(version))


def protection_job_spec(*, dataset: str, version: int, protect: Sequence[str], keep: Sequence[str] = (),
                        generator: str | refs_pb2.ModelRef | None = None,
                        model: str | refs_pb2.ModelRef | None = None, verify_unlearning: bool = False,
                        distortion_copies: int = 0, preview_size: int = 0, initial_intensity: float = 0.0,
                        epsilon: float | None = None, delta: float = 1e-5, seed: int = 0,
                        policy: str | Path | dict | js.ReleasePolicy | None = None,
                        review: str | None = None) -> js.ProtectionJobSpec:
    """A job's spec. `dataset` is the dataset id (or datasets/<id>); `generator` and `model` are MODEL:VERSION or
    ModelRefs. ValueError (PolicyError for the policy) on a bad review, a policy about an attribute the job
    neither protects nor keeps, or an automatic review without a policy."""
    spec = js.ProtectionJobSpec(
        dataset=refs_pb2.DatasetRef(dataset=dataset if dataset.startswith("datasets/") else f"datasets/{dataset}",
                                    version=version),
        protected_attributes=list(protect), kept_attributes=list(keep), preview_size=preview_size,
        initial_intensity=initial_intensity, seed=seed, verify_unlearning=verify_unlearning,
        distortion_copies=distortion_copies)
    if generator is not None:
        spec.generator.CopyFrom(model_ref(generator) if isinstance(generator, str) else generator)
    if model is not None:
        spec.model.CopyFrom(model_ref(model) if isinstance(model, str) else model)
    if epsilon is not None:
        spec.budget.CopyFrom(privacy_pb2.PrivacyBudget(epsilon=epsilon, delta=delta))
    if policy is not None:
        spec.policy.CopyFrom(load_policy(policy))
        _check_attributes(spec, source=str(policy) if isinstance(policy, (str, Path)) else "")
    if review is not None:
        if review not in REVIEWS:
            raise ValueError(f"review {review!r}: one of {', '.join(REVIEWS)}")
        if review == "automatic" and policy is None:
            raise ValueError("an automatic review needs a policy: the coordinator answers each round by its limits")
        spec.review = REVIEWS[review]
    return spec


def _check_attributes(spec: js.ProtectionJobSpec, *, source: str) -> None:
    for name, attributes, kind in (("max_adversary_advantage", spec.protected_attributes, "protected"),
                                   ("min_kept_utility", spec.kept_attributes, "kept")):
        for attribute in getattr(spec.policy, name):
            if attribute not in attributes:
                raise PolicyError(f"{attribute!r} is not a {kind} attribute of the job "
                                  f"({', '.join(attributes) or 'none'})", field=f"{name}.{attribute}", source=source)


def create_protection_job(stub, job_id: str, spec: js.ProtectionJobSpec, *, request_id: str | None = None,
                          timeout: float = 120.0) -> lro.Operation:
    """Starts the job (`stub` is a JobServiceStub, e.g. `Client().jobs`); returns its operation. A retry with
    the same `request_id` returns the same operation."""
    request = js.CreateProtectionJobRequest(job_id=job_id, spec=spec, request_id=request_id or str(uuid.uuid4()))
    return call(stub.CreateProtectionJob, request, timeout=timeout).operation
