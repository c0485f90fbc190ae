"""The protection job through the coordinator's public API, over real gRPC, with a real anonymizer beside it on
the same object store and a small real DP generator: a tenant creates a job, looks at previews, answers more and
less privacy, accepts, and gets an anonymized version and a report; every round is charged once in the ledger;
bad input and other tenants are refused."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from support import create_tenant, free_port, start_service, status_details
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc, ledger_service_pb2, ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GENERATOR = refs_pb2.ModelRef(model="models/faces-gen", version=1)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    coordinator = start_service("coordinator", home, budget=(1e5, 0.1),
                                UMBRA_ANONYMIZER_URLS=f"127.0.0.1:{port}")
    anonymizer = start_service("anonymizer", home, coordinator=coordinator, UMBRA_ANONYMIZER_PORT=str(port))
    store = LocalObjectStore(home / "objects")
    faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", 64, size=32, seed=4)
    uploaded = DatasetsClient(coordinator.channel()).upload(faces, "faces", progress=False, policy=SizePolicy(size=32))
    test_faces = uploaded.split_counts["test"]  # the upload's seeded split
    assert test_faces >= 4
    stub = anonymizer_service_pb2_grpc.AnonymizerServiceStub(anonymizer.channel())
    op = stub.TrainGenerator(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), condition_attributes=["gender", "age"],
        model="models/faces-gen", image_size=32, epochs=1, batch_size=8, learning_rate=2e-3, seed=1,
        privacy=an.GeneratorPrivacy(target_epsilon=8.0, target_delta=1e-3, max_grad_norm=1.0, noise_multiplicity=1),
        request_id="6b0c5d0e-0000-4000-8000-000000000001"), timeout=60).operation
    OperationsClient(anonymizer.channel()).result(op.name, an.GeneratorResult, poll_seconds=0.5, timeout=600)
    yield coordinator, anonymizer, store, test_faces
    coordinator.running.stop(grace=0)
    anonymizer.running.stop(grace=0)


def spec(**overrides) -> js.ProtectionJobSpec:
    fields = dict(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), protected_attributes=["gender"],
                  kept_attributes=["age"], preview_size=3, generator=GENERATOR, seed=7) | overrides
    return js.ProtectionJobSpec(**fields)


def jobs(served) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(served.channel())


def preview(stub, job: str, round_number: int, timeout: float = 300) -> js.GetPreviewResponse:
    """The preview of round `round_number`, once it is shown."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            shown = stub.GetPreview(js.GetPreviewRequest(job=job), timeout=30)
            if shown.round.name.endswith(f"/rounds/{round_number}"):
                return shown
        except grpc.RpcError as exc:
            if status_details(exc).get("reason") != "ROUND_NOT_READY":
                raise
        assert time.monotonic() < deadline, f"round {round_number} was never shown"
        time.sleep(0.3)


def test_a_job_through_three_rounds_to_an_anonymized_version_and_a_report(services):
    coordinator, _, store, test_faces = services
    stub = jobs(coordinator)
    created = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="protect-faces", spec=spec(),
                                                                     request_id="job-1"), timeout=60)
    again = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="protect-faces", spec=spec(),
                                                                   request_id="job-1"), timeout=60)
    assert again.operation.name == created.operation.name  # the same request: the same job

    first = preview(stub, "jobs/protect-faces", 1)
    assert first.round.intensity == 0.5 and len(first.pairs) == 3
    assert first.round.privacy_cost.epsilon > 0 and first.round.budget_left.epsilon > 0
    assert 0 <= first.round.risk["reid_rank1"] <= 1 and 0 <= first.round.risk["reid_verify_rate"] <= 1
    assert first.round.risk["reid_gallery"] == test_faces  # the 3 previewed originals and the other test faces
    assert all(p.original.data and p.anonymized.data and p.original.sample_key == p.anonymized.sample_key
               for p in first.pairs)
    answered = stub.SubmitFeedback(js.SubmitFeedbackRequest(round=first.round.name, feedback=js.FEEDBACK_MORE_PRIVACY,
                                                            request_id="answer-1"), timeout=30)
    assert answered.next_round.intensity == 0.75
    retried = stub.SubmitFeedback(js.SubmitFeedbackRequest(round=first.round.name, feedback=js.FEEDBACK_MORE_PRIVACY,
                                                           request_id="answer-1"), timeout=30)
    assert retried.round.feedback == js.FEEDBACK_MORE_PRIVACY  # answered once
    with pytest.raises(grpc.RpcError) as err:  # the round is not the current one any more
        stub.SubmitFeedback(js.SubmitFeedbackRequest(round=first.round.name, feedback=js.FEEDBACK_ACCEPT,
                                                     request_id="answer-x"), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    second = preview(stub, "jobs/protect-faces", 2)
    flagged = [second.pairs[0].original.sample_key]
    answered = stub.SubmitFeedback(js.SubmitFeedbackRequest(round=second.round.name, flagged_samples=flagged,
                                                            request_id="answer-2"), timeout=30)
    assert answered.next_round.intensity == 0.875 and list(answered.round.flagged_samples) == flagged
    third = preview(stub, "jobs/protect-faces", 3)
    stub.SubmitFeedback(js.SubmitFeedbackRequest(round=third.round.name, feedback=js.FEEDBACK_LESS_PRIVACY,
                                                 request_id="answer-3"), timeout=30)
    fourth = preview(stub, "jobs/protect-faces", 4)
    assert fourth.round.intensity == 0.8125  # never one shown before
    stub.SubmitFeedback(js.SubmitFeedbackRequest(round=fourth.round.name, feedback=js.FEEDBACK_ACCEPT,
                                                 request_id="answer-4"), timeout=30)

    done = OperationsClient(coordinator.channel()).result(created.operation.name, js.ProtectionJob,
                                                          poll_seconds=0.5, timeout=600)
    assert done.state == js.ProtectionJob.STATE_SUCCEEDED and done.accepted_intensity == 0.8125
    assert done.anonymized_dataset.dataset == "datasets/faces" and done.anonymized_dataset.version == 2
    rounds = stub.ListFeedbackRounds(js.ListFeedbackRoundsRequest(parent="jobs/protect-faces", page_size=3),
                                     timeout=30)
    rest = stub.ListFeedbackRounds(js.ListFeedbackRoundsRequest(parent="jobs/protect-faces", page_size=3,
                                                                page_token=rounds.next_page_token), timeout=30)
    assert [r.intensity for r in list(rounds.rounds) + list(rest.rounds)] == [0.5, 0.75, 0.875, 0.8125]

    report = stub.GetReport(js.GetReportRequest(job="jobs/protect-faces"), timeout=30)
    content = json.loads(report.json_content)
    assert report.metrics["rounds"] == 4 and 0 < report.metrics["preview_epsilon_share"] < 1
    assert report.privacy_total.epsilon == pytest.approx(content["privacy"]["total"]["epsilon"])
    assert report.privacy_total.epsilon >= max(r["cost"]["epsilon"] for r in content["rounds"])
    assert b"<img" in report.html_content and store.get("umbra-acme", report.report_html.key) == report.html_content

    ledger = ledger_service_pb2_grpc.LedgerServiceStub(coordinator.channel())
    entries = ledger.ListLedgerEntries(ledger_service_pb2.ListLedgerEntriesRequest(page_size=100), timeout=60).entries
    spenders = sorted(e.spent_by for e in entries)
    assert spenders.count("Anonymize") == 4 and spenders.count("AnonymizeDataset") == 1  # each round once


def test_bad_jobs_are_refused_by_field_before_any_work(services):
    coordinator, _, _, test_faces = services
    stub = jobs(coordinator)
    cases = [
        ("Bad Id", spec(), "job_id"),
        ("job-a", spec(protected_attributes=[]), "spec.protected_attributes"),
        ("job-a", spec(protected_attributes=["shoe-size"]), "spec.protected_attributes"),
        ("job-a", spec(kept_attributes=["gender"]), "spec.kept_attributes"),
        ("job-a", spec(preview_size=17), "spec.preview_size"),
        ("job-a", spec(preview_size=test_faces + 1), "spec.preview_size"),  # more than the test split holds
        ("job-a", spec(initial_intensity=1.5), "spec.initial_intensity"),
        ("job-a", spec(budget=privacy_pb2.PrivacyBudget(epsilon=-1, delta=1e-6)), "spec.budget.epsilon"),
        ("job-a", spec(dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=0)), "spec.dataset.version"),
        ("job-a", spec(distortion_copies=2), "spec.distortion_copies"),
    ]
    for job_id, bad, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id=job_id, spec=bad), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value.details())
        assert status_details(err.value)["fields"] == [field]
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="job-b", spec=spec(
            dataset=refs_pb2.DatasetRef(dataset="datasets/nothing", version=1))), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for call, request in ((stub.GetProtectionJob, js.GetProtectionJobRequest(name="jobs/Nope")),
                          (stub.SubmitFeedback, js.SubmitFeedbackRequest(round="jobs/x/rounds/١",
                                                                         feedback=js.FEEDBACK_ACCEPT))):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_tenants_job_does_not_exist(services):
    coordinator, _, _, _ = services
    other = job_service_pb2_grpc.JobServiceStub(open_channel(
        coordinator.target, create_tenant(coordinator.target, "globex")))
    for call, request in ((other.GetProtectionJob, js.GetProtectionJobRequest(name="jobs/protect-faces")),
                          (other.GetPreview, js.GetPreviewRequest(job="jobs/protect-faces")),
                          (other.GetReport, js.GetReportRequest(job="jobs/protect-faces")),
                          (other.SubmitFeedback, js.SubmitFeedbackRequest(round="jobs/protect-faces/rounds/1",
                                                                          feedback=js.FEEDBACK_ACCEPT))):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, call
    assert not other.ListProtectionJobs(js.ListProtectionJobsRequest(), timeout=30).jobs
