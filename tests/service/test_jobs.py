"""The protection job through the coordinator's public API, over real gRPC, with a real anonymizer, unlearning
and training service beside it on the same object store, a small real DP generator and a small classifier: a
tenant creates a job (which reuses the generator trained on the dataset), looks at previews, answers more and
less privacy, accepts, and gets an anonymized version, the classifier updated to it by unlearning (verified
against retraining) and a report; every round is charged once in the ledger. A job that finds no generator
trains one; cancelling releases what the job reserved; bad input and other tenants are refused."""

from __future__ import annotations

import dataclasses
import json
import time

import grpc
import pytest

from support import SERVICE_TOKEN, create_tenant, free_port, start_service, status_details
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc, ledger_service_pb2, ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.runtime.server import create_server
from umbra.services.registry import spec as service_spec
from umbra.storage.local import LocalObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GENERATOR = refs_pb2.ModelRef(model="models/faces-gen", version=1)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    port, unlearning_port, distortion_port = free_port(), free_port(), free_port()
    coordinator = start_service("coordinator", home, budget=(1e5, 0.1), UMBRA_ANONYMIZER_URLS=f"127.0.0.1:{port}",
                                UMBRA_UNLEARNING_URL=f"127.0.0.1:{unlearning_port}",
                                UMBRA_DISTORTION_URL=f"127.0.0.1:{distortion_port}")
    anonymizer = start_service("anonymizer", home, coordinator=coordinator, UMBRA_ANONYMIZER_PORT=str(port))
    training = start_service("training", home)
    unlearning = start_service("unlearning", home, UMBRA_UNLEARNING_PORT=str(unlearning_port),
                               UMBRA_TRAINING_URL=training.target)
    distortion = start_service("distortion", home, UMBRA_DISTORTION_PORT=str(distortion_port))
    store = LocalObjectStore(home / "objects")
    faces = synthetic.write_folder(tmp_path_factory.mktemp("faces") / "faces", 120, size=32, seed=4)
    uploaded = DatasetsClient(coordinator.channel()).upload(faces, "faces", progress=False, policy=SizePolicy(size=32))
    test_faces = uploaded.split_counts["test"]  # the upload's seeded split
    assert test_faces >= 4
    stub = anonymizer_service_pb2_grpc.AnonymizerServiceStub(anonymizer.channel())
    op = stub.TrainGenerator(an.TrainGeneratorRequest(
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
        condition_attributes=["gender", "age", "smile"], model="models/faces-gen", image_size=32, epochs=1,
        batch_size=8, learning_rate=2e-3, seed=1,
        privacy=an.GeneratorPrivacy(target_epsilon=8.0, target_delta=1e-3, max_grad_norm=1.0, noise_multiplicity=1),
        request_id="6b0c5d0e-0000-4000-8000-000000000001"), timeout=60).operation
    OperationsClient(anonymizer.channel()).result(op.name, an.GeneratorResult, poll_seconds=0.5, timeout=600)
    for model, dataset in (("models/smile", "datasets/faces"), ("models/smile-elsewhere", "datasets/elsewhere")):
        if dataset != "datasets/faces":
            DatasetsClient(coordinator.channel()).upload(faces, dataset.removeprefix("datasets/"), progress=False,
                                                         policy=SizePolicy(size=32))
        op = training_service_pb2_grpc.TrainingServiceStub(training.channel()).Train(ts.TrainRequest(
            model=model, dataset=refs_pb2.DatasetRef(dataset=dataset, version=1), task="smile",
            architecture=ts.ARCHITECTURE_GROUPNORM_CNN, seed=1, hyperparameters=ts.Hyperparameters(
                epochs=2, batch_size=16, physical_batch_size=16, learning_rate=3e-3, width=8)), timeout=30).operation
        OperationsClient(training.channel()).result(op.name, ts.ModelVersion, poll_seconds=0.5, timeout=600)
    yield coordinator, anonymizer, store, test_faces
    for served in (coordinator, anonymizer, training, unlearning, distortion):
        served.running.stop(grace=0)


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


def test_a_job_through_three_rounds_to_an_anonymized_version_an_updated_model_and_a_report(services):
    coordinator, _, store, test_faces = services
    stub = jobs(coordinator)
    # no generator named: the job reuses the tenant's DP generator trained on datasets/faces v1 (gender, age, smile)
    job_spec = spec(generator=None, kept_attributes=["smile"], model=refs_pb2.ModelRef(model="models/smile", version=1),
                    verify_unlearning=True, distortion_copies=1)
    created = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="protect-faces", spec=job_spec,
                                                                     request_id="job-1"), timeout=60)
    again = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="protect-faces", spec=job_spec,
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
    assert done.unlearned_model == refs_pb2.ModelRef(model="models/smile", version=2)  # a new version of the model
    assert done.distorted_dataset == refs_pb2.DatasetRef(dataset="datasets/faces", version=3)  # MDP of version 2
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
    assert content["generator"] == {"model": GENERATOR.model, "version": GENERATOR.version, "trained_by_job": False,
                                    "cost": None}  # reused, not trained again
    assert content["unlearning"]["changed_samples"] > 0 and report.metrics["unlearning_changed_samples"] > 0
    verification = content["unlearning"]["verification"]
    assert 0 <= verification["agreement_with_retrained"] <= 1 and verification["test_count"] == test_faces
    assert 0 <= report.metrics["unlearning_accuracy_unlearned"] <= 1
    assert b"feature unlearning" in report.html_content
    assert content["distortion"]["copies"] == 1 and content["distortion"]["label"] == "smile"
    assert content["distortion"]["images"] > 0 and b"MDP of the released training split" in report.html_content
    assert 0 <= report.metrics["reid_rank1"] <= 1 and report.metrics["reid_faces"] == test_faces
    assert 0 <= report.metrics["adversary_gender_bacc"] <= 1 and report.metrics["adversary_gender_chance"] == 0.5
    assert report.metrics["kept_smile_utility_ratio"] > 0
    assert 0 <= first.round.risk["gender_classifier_agreement"] <= 1  # what a gender classifier still finds

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
        ("job-a", spec(distortion_copies=2), "spec.distortion_copies"),  # MDP needs the model's features
        ("job-a", spec(distortion_copies=9, model=refs_pb2.ModelRef(model="models/smile", version=1),
                       kept_attributes=["smile"]), "spec.distortion_copies"),
        ("job-a", spec(verify_unlearning=True), "spec.verify_unlearning"),  # verifies nothing without a model
        ("job-a", spec(model=refs_pb2.ModelRef(model="models/smile-elsewhere", version=1), kept_attributes=["smile"]),
         "spec.model"),
        ("job-a", spec(model=refs_pb2.ModelRef(model="models/smile", version=1)), "spec.model"),  # smile not kept
        ("job-a", spec(model=refs_pb2.ModelRef(model="models/faces-gen", version=1)), "spec.model"),  # a generator
        ("job-a", spec(model=refs_pb2.ModelRef(model="models/smile", version=0)), "spec.model"),
        # the verification's probe predicts a categorical attribute other than the model's task (smile)
        ("job-a", spec(model=refs_pb2.ModelRef(model="models/smile", version=1), protected_attributes=["smile"],
                       kept_attributes=["age"], verify_unlearning=True), "spec.verify_unlearning"),
    ]
    for job_id, bad, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id=job_id, spec=bad), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value.details())
        assert status_details(err.value)["fields"] == [field]
    for missing in (spec(dataset=refs_pb2.DatasetRef(dataset="datasets/nothing", version=1)),
                    spec(model=refs_pb2.ModelRef(model="models/nothing", version=1))):
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="job-b", spec=missing), timeout=30)
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


def ledger_entries(served) -> list:
    ledger = ledger_service_pb2_grpc.LedgerServiceStub(served.channel())
    return list(ledger.ListLedgerEntries(ledger_service_pb2.ListLedgerEntriesRequest(page_size=1000),
                                         timeout=60).entries)


def test_a_job_without_a_generator_trains_one_and_cancelling_it_releases_what_it_reserved(services):
    coordinator, _, _, _ = services
    stub = jobs(coordinator)
    operations = OperationsClient(coordinator.channel())
    # no generator of the tenant conditions on glasses: the job trains one (DP-SGD, charged in the ledger)
    job_spec = spec(generator=None, kept_attributes=["glasses"], seed=11)
    created = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="protect-smiles", spec=job_spec),
                                       timeout=60)
    first = preview(stub, "jobs/protect-smiles", 1, timeout=600)
    assert first.round.privacy_cost.epsilon > 0
    trained = [e for e in ledger_entries(coordinator) if e.spent_by == "TrainGenerator"
               and e.state == privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED]
    assert len(trained) == 2  # the fixture's generator, and this job's
    stub.SubmitFeedback(js.SubmitFeedbackRequest(round=first.round.name, feedback=js.FEEDBACK_ACCEPT), timeout=30)

    # cancelled while the whole dataset is anonymized (or just after): nothing stays reserved, no version is left
    deadline = time.monotonic() + 300
    while stub.GetProtectionJob(js.GetProtectionJobRequest(name="jobs/protect-smiles"), timeout=30).job.state != \
            js.ProtectionJob.STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    operations.cancel(created.operation.name)
    ended = operations.wait(created.operation.name, timeout=300, poll_seconds=0.5)
    job = stub.GetProtectionJob(js.GetProtectionJobRequest(name="jobs/protect-smiles"), timeout=30).job
    if ended.HasField("error"):  # cancelled in time
        assert job.state == js.ProtectionJob.STATE_CANCELLED
        with pytest.raises(grpc.RpcError) as err:
            stub.GetReport(js.GetReportRequest(job="jobs/protect-smiles"), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    else:  # the job finished before the cancel reached it: it stands
        assert job.state == js.ProtectionJob.STATE_SUCCEEDED
    assert not [e for e in ledger_entries(coordinator) if e.state == privacy_pb2.PRIVACY_CHARGE_STATE_RESERVED]
    versions = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel()).ListDatasetVersions(
        ds.ListDatasetVersionsRequest(parent="datasets/faces"), timeout=30).dataset_versions
    assert all(v.state == ds.DatasetVersion.STATE_COMMITTED for v in versions)  # the job's uncommitted one is deleted


def test_a_tenant_whose_budget_is_spent_cannot_start_a_job(services):
    coordinator, _, _, _ = services
    key = create_tenant(coordinator.target, "spent", budget=(0.5, 1e-6))
    ledger = ledger_service_pb2_grpc.LedgerServiceStub(open_channel(coordinator.target, SERVICE_TOKEN, tenant="spent"))
    cost = privacy_pb2.PrivacyCost(mechanism=privacy_pb2.PRIVACY_MECHANISM_RANDOMIZED_RESPONSE, epsilon=0.5,
                                   description="attribute gender")
    ledger.ReservePrivacyCharge(ledger_service_pb2.ReservePrivacyChargeRequest(
        dataset="datasets/faces", cost=cost, request_id="all-of-it", spent_by="test"), timeout=30)
    stub = job_service_pb2_grpc.JobServiceStub(open_channel(coordinator.target, key))
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="protect-faces", spec=spec()), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(err.value)["reason"] == "PRIVACY_BUDGET_EXHAUSTED"
    assert not stub.ListProtectionJobs(js.ListProtectionJobsRequest(), timeout=30).jobs  # nothing recorded


def test_a_job_carries_on_after_the_coordinator_stops_gracefully_and_starts_again(services):
    coordinator, _, _, _ = services
    stub = jobs(coordinator)
    previews_before = sum(e.spent_by == "Anonymize" for e in ledger_entries(coordinator))
    created = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id="protect-restart", spec=spec(seed=5),
                                                                     request_id="job-restart"), timeout=60)
    first = preview(stub, "jobs/protect-restart", 1)
    config = dataclasses.replace(coordinator.running.runtime.config, port=coordinator.running.port)
    coordinator.running.stop(grace=1)  # a rolling update: the job's operation ends interrupted
    coordinator.running = create_server(config, service_spec("coordinator")).start()
    stub = jobs(coordinator)
    job = stub.GetProtectionJob(js.GetProtectionJobRequest(name="jobs/protect-restart"), timeout=30).job
    assert job.state == js.ProtectionJob.STATE_AWAITING_FEEDBACK
    assert job.operation and job.operation != created.operation.name  # carried on under a new operation
    shown = preview(stub, "jobs/protect-restart", 1)
    assert shown.round.name == first.round.name and shown.pairs[0].anonymized.data == first.pairs[0].anonymized.data
    stub.SubmitFeedback(js.SubmitFeedbackRequest(round=first.round.name, feedback=js.FEEDBACK_ACCEPT), timeout=30)
    done = OperationsClient(coordinator.channel()).result(job.operation, js.ProtectionJob, poll_seconds=0.5,
                                                          timeout=600)
    assert done.state == js.ProtectionJob.STATE_SUCCEEDED
    rounds = stub.ListFeedbackRounds(js.ListFeedbackRoundsRequest(parent="jobs/protect-restart"), timeout=30).rounds
    assert [r.intensity for r in rounds] == [0.5]  # no round lost or repeated
    assert sum(e.spent_by == "Anonymize" for e in ledger_entries(coordinator)) == previews_before + 1  # once
