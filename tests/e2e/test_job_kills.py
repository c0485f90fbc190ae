"""Issue 16's fault tests: a protection job whose coordinator is killed (SIGKILL) in each stage and restarted on
the same data folder and port finishes, with nothing charged or trained twice, no stray version, and the rounds
shown before the kill neither lost nor repeated; an anonymizer replica killed mid-dataset leaves its shards to
the other replica and the job's output is byte-identical to one replica's.

Every service is `umbra serve` in its own process (tests/support.py serve_process). The stages are hit by
polling the job's operation (`progress.stage`) every 20 ms and killing when the stage appears: the job training
its own generator (preparing) and previews take seconds (the first embeds the recognizer's gallery and trains
the preview's attribute judge), anonymizing 300 faces about ten seconds, measuring the release (re-identification,
a retrained adversary) and updating the classifier by unlearning a few seconds each; the commit and report take
about 0.2 s, which the poll still hits (the test then checks the operation was resumed, not found done). Each
test is its own tenant (its own bucket and ledger) on one coordinator, two anonymizer replicas, the unlearning
service and the training service."""

from __future__ import annotations

import json
import time

import pytest

from e2e.jobkit import (ANSWER, SCRIPT, Stack, Tenant, check_charges, check_versions, dataset_request, kill,
                        review, train_classifier, write_generator)
from support import SERVICE_TOKEN
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.classifiers.registry import ModelRegistry
from umbra.client.operations import OperationsClient, progress_of
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.storage.datasets import DatasetReader
from umbra.storage.local import LocalObjectStore
from umbra.unlearning.v1 import unlearning_service_pb2 as us

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FACES = 300  # two output shards (256 samples each): the dataset is fanned out to both replicas
REPLICA_FACES = 400  # replica 1's shard holds 144 (3 batches of 64): it is seen anonymizing before it ends
INTENSITIES = [0.5, 0.75, 0.625]  # SCRIPT's rounds: more, less, accept


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("kills"), replicas=2, unlearning=True)
    try:
        yield stack.start()
    finally:
        stack.close()


def tenant_with_faces(stack: Stack, name: str, folder, faces: int = FACES, generator: bool = True) -> Tenant:
    """A tenant with `faces` uploaded (and, with `generator`, the tiny generator jobkit.GENERATOR)."""
    tenant = Tenant.create(stack.target, name)
    assert tenant.upload(folder / "faces", faces).sample_count == faces
    if generator:
        write_generator(LocalObjectStore(stack.objects), f"umbra-{name}")
    return tenant


def shown(rounds: list[js.FeedbackRound]) -> list[tuple]:
    """What a tenant saw of each round: name, intensity, answer, charge, risk (a round still previewing: its
    name and intensity only)."""
    return [(r.name, r.intensity, r.feedback, r.privacy_cost.epsilon, dict(r.risk)) for r in rounds]


def check_rounds(before: list[tuple], after: list[js.FeedbackRound]) -> None:
    """The rounds after the restarts are the script's, and those shown before each kill are among them as shown."""
    assert [r.intensity for r in after] == INTENSITIES
    assert len({r.intensity for r in after}) == len(after)  # no intensity repeated
    assert [r.feedback for r in after] == [ANSWER[a] for a in SCRIPT]
    seen = shown(after)
    for i, earlier in enumerate(before):
        if earlier[3]:  # shown before the kill: the same preview, charge and risk (and answer, if answered)
            assert seen[i][:2] == earlier[:2] and seen[i][3:] == earlier[3:], (earlier, seen[i])
            assert earlier[2] in (js.FEEDBACK_UNSPECIFIED, seen[i][2])
        else:  # opened, its preview not made yet: the same round at the same intensity
            assert seen[i][:2] == earlier[:2]


def kill_and_restart(stack: Stack, tenant: Tenant, job: str, before: list, *, wait=None) -> None:
    """Records the rounds as they stand, SIGKILLs the coordinator (then runs `wait()`), and starts it again."""
    before[:] = shown(tenant.rounds(job))
    kill(stack.coordinator)
    if wait is not None:
        wait()
    stack.start_coordinator()


def commit_retrying(stack: Stack, tenant: str, timeout: float = 300) -> None:
    """Waits until an anonymizer replica has finished `tenant`'s work and retries committing its privacy charge
    because the coordinator (the ledger) cannot be reached."""
    deadline = time.monotonic() + timeout
    while not any("the ledger cannot be reached" in line and f'"tenant": "{tenant}"' in line
                  for line in stack.logs("anonymizer").splitlines()):
        assert time.monotonic() < deadline, "no anonymizer retried its commit"
        time.sleep(0.2)


def anonymizer_idle(stack: Stack, tenant: str, timeout: float = 300) -> None:
    """Waits until no AnonymizeDataset operation of `tenant` is running on any replica."""
    deadline = time.monotonic() + timeout
    for index in range(stack.replicas):
        operations = stack.anonymizer_operations(index, tenant)
        while any(not op.done for op in operations.list()):
            assert time.monotonic() < deadline, f"replica {index} is still anonymizing"
            time.sleep(0.2)


STAGES = {
    "preparing": ("training the generator: ",),  # the anonymizer's TrainGenerator operation reports its progress
    "previewing": ("round 1: previewing",),
    "anonymizing": ("anonymizing the dataset",),
    "committing": ("committing the anonymized version", "commit: ", "writing the report"),
    "measuring": ("measuring re-identification", "retraining an adversary"),
    "unlearning": ("updating models/gender", "unlearning"),
}


@pytest.mark.parametrize("when", ["preparing", "previewing", "awaiting", "answered", "anonymizing",
                                  "anonymizing, the anonymizer finished and retrying its commit", "committing",
                                  "measuring, then unlearning"])
def test_a_coordinator_killed_mid_job_finishes_it_after_a_restart(stack, tmp_path, when):
    name = "k-" + "-".join(when.replace(",", "").split()[:2])
    # one shard (the whole dataset is one call that settles) where the dataset is not what the case is about; few
    # faces where the job trains its generator (DP-SGD, 4 epochs: 5 minutes for 200 faces), but more training
    # images than the generator's batch (64: job_models leaves the anonymizer's default)
    faces = FACES if when in ("previewing", "awaiting", "answered", "anonymizing", "committing") else 200
    faces = 84 if when == "preparing" else faces
    trains = when == "preparing"  # no generator: the job trains one (a DP generator, charged in the ledger)
    tenant = tenant_with_faces(stack, name, tmp_path, faces, generator=not trains)
    job = "protect-faces"
    extra = {}
    if trains:
        extra = dict(generator=None)
    if "unlearning" in when:  # the job also updates a classifier of the protected attribute by unlearning
        extra = dict(model=train_classifier(stack.training_target, name, task="gender"))
    operation = tenant.create_job(job, **extra)
    before: list = []
    killed_at = {}

    if when in ("preparing", "previewing"):  # the generator / the first preview is being made by the anonymizer
        killed_at["stage"] = tenant.wait_for_stage(operation, STAGES[when], timeout=600)
        kill_and_restart(stack, tenant, job, before)

    def before_answer(number, preview):
        if when == "awaiting" and number == 2:  # round 2 shown, its answer not given
            killed_at["stage"] = tenant.wait_for_stage(operation, ("round 2: awaiting feedback",))
            killed_at["preview"] = [p.anonymized.data for p in preview.pairs]
            kill_and_restart(stack, tenant, job, before)

    def after_answer(number, response):
        if when == "answered" and number == 2:  # round 2 answered, round 3 opened
            assert response.next_round.intensity == INTENSITIES[2]
            killed_at["stage"] = "round 2 answered"
            kill_and_restart(stack, tenant, job, before)

    previews = review(tenant, job, before_answer=before_answer, after_answer=after_answer)
    if when == "awaiting":
        assert [p.anonymized.data for p in previews[2].pairs] == killed_at["preview"]  # the same images again
    if when.startswith("anonymizing"):
        killed_at["stage"] = tenant.wait_for_stage(operation, STAGES["anonymizing"])
        running_shard_operation(stack, 0, name)  # the anonymizer is at work (the stage is reported before it starts)
        # the anonymizer finishes while the coordinator is down and retries committing its charge (up to 120 s,
        # ledger_client.COMMIT_PATIENCE): the coordinator is back before that, and takes the commit
        wait = (lambda: commit_retrying(stack, name)) if "retrying" in when else None
        kill_and_restart(stack, tenant, job, before, wait=wait)
    if when == "committing":
        killed_at["stage"] = tenant.wait_for_stage(operation, STAGES[when], poll=0.005)
        kill_and_restart(stack, tenant, job, before)
    if "measuring" in when:  # the released test faces re-identified, an adversary retrained: then the update
        for stage in ("measuring", "unlearning"):
            killed_at[stage] = tenant.wait_for_stage(operation, STAGES[stage], poll=0.005)
            kill_and_restart(stack, tenant, job, before)

    done = tenant.result(operation)
    assert done.state == js.ProtectionJob.STATE_SUCCEEDED, tenant.job(job)
    assert done.accepted_intensity == INTENSITIES[2]
    after = tenant.rounds(job)
    check_rounds(before, after)
    check_charges(tenant, job, len(SCRIPT), version=2, generator_trained=trains)
    check_versions(tenant, done, faces)
    report = tenant.jobs.GetReport(js.GetReportRequest(job=f"jobs/{job}"), timeout=30)
    assert report.metrics["rounds"] == len(SCRIPT)
    assert 0 <= report.metrics["reid_rank1"] <= 1 and 0 <= report.metrics["adversary_gender_bacc"] <= 1
    models = list(ModelRegistry(LocalObjectStore(stack.objects)).versions(f"umbra-{name}"))
    if trains:  # trained once, whatever the kill: one TrainGenerator operation, one version
        assert ("protect-faces-generator", 1) in models and ("protect-faces-generator", 2) not in models, models
        assert len([op for op in stack.anonymizer_operations(0, name).list()
                    if op.metadata.Is(an.TrainGeneratorMetadata.DESCRIPTOR)]) == 1
    if "unlearning" in when:  # updated once: one Unlearn operation, one new version of the model
        assert done.unlearned_model == refs_pb2.ModelRef(model="models/gender", version=2)
        assert [m for m in models if m[0] == "gender"] == [("gender", 1), ("gender", 2)], models
        refused = json.loads(report.json_content)["unlearning"]["second_order_refused"]  # then first order ran
        assert len([op for op in stack.unlearning_operations(name).list()
                    if op.metadata.Is(us.UnlearnMetadata.DESCRIPTOR)]) == (2 if refused else 1)
    # the operation was resumed by the restarted coordinator (not found done, not started again)
    assert f"operation {operation} (CreateProtectionJob) resumed after a restart" in stack.logs("coordinator"), \
        killed_at


# -- an anonymizer replica killed mid-dataset -------------------------------------------------------------------

def running_shard_operation(stack: Stack, index: int, tenant: str, timeout: float = 300):
    """The replica's AnonymizeDataset operation once it has anonymized some images (and is not done)."""
    operations = stack.anonymizer_operations(index, tenant)
    deadline = time.monotonic() + timeout
    while True:
        for op in operations.list():
            progress = progress_of(op)
            if not op.done and progress is not None and progress.stage == "anonymizing" and progress.done > 0:
                return op
        assert time.monotonic() < deadline, f"replica {index} never started anonymizing"
        time.sleep(0.05)


def reference_version(stack: Stack, tenant: Tenant, job: js.ProtectionJob) -> int:
    """The job's dataset anonymized by one replica alone into a version of its own, committed."""
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(tenant.channel())
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent="datasets/faces",
                                                                             shard_count=1), timeout=30)
    version = int(reserved.dataset_version.name.rsplit("/", 1)[1])
    channel = open_channel(f"127.0.0.1:{stack.anonymizer_ports[0]}", SERVICE_TOKEN, tenant=tenant.name)
    op = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel).AnonymizeDataset(
        dataset_request(job, version), timeout=60).operation
    OperationsClient(channel).result(op.name, an.AnonymizationResult, poll_seconds=0.5, timeout=600)
    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(
        name=f"datasets/faces/versions/{version}"), timeout=30)
    tenant.operations.result(commit.operation.name, cds.DatasetVersion, poll_seconds=0.5, timeout=300)
    return version


def images(store, tenant: str, version: int) -> dict[str, bytes]:
    return {sample.key: data for sample, data in DatasetReader(store, f"umbra-{tenant}", "faces",
                                                               version).iter_images()}


def test_an_anonymizer_replica_killed_mid_dataset_leaves_its_shards_to_the_other(stack, tmp_path):
    """Replica 1 is dealt shard 1 of 2 and is SIGKILLed while anonymizing it: the coordinator deals the shard to
    replica 0, the job succeeds, and the version holds the same bytes as one replica writing it alone. The
    killed replica is then started again: whatever it resumes leaves the committed version as it is."""
    name = "k-replica"
    tenant = tenant_with_faces(stack, name, tmp_path, REPLICA_FACES)
    operation = tenant.create_job("protect-faces")
    review(tenant, "protect-faces")
    tenant.wait_for_stage(operation, ("anonymizing the dataset",))
    victim = running_shard_operation(stack, 1, name)
    kill(stack.anonymizers[1])
    try:
        done = tenant.result(operation)
    finally:
        stack.start_anonymizer(1)
    assert done.state == js.ProtectionJob.STATE_SUCCEEDED, tenant.job("protect-faces")
    check_charges(tenant, "protect-faces", len(SCRIPT), version=2)
    check_versions(tenant, done, REPLICA_FACES)

    anonymizer_idle(stack, name)  # the restarted replica may resume its shard: the same bytes, in staging only
    assert stack.anonymizer_operations(1, name).get(victim.name).done
    shard_ops = [op for op in stack.anonymizer_operations(0, name).list()
                 if op.metadata.Is(an.AnonymizeDatasetMetadata.DESCRIPTOR) and op.done and not op.HasField("error")]
    assert len(shard_ops) >= 3  # its own shard, the killed replica's shard, the call that finished the version

    store = LocalObjectStore(stack.objects)
    reference = reference_version(stack, tenant, done)
    expected, got = images(store, name, reference), images(store, name, 2)
    assert len(got) == REPLICA_FACES and got == expected  # byte-identical to one replica's


def test_with_one_replica_a_coordinator_down_while_the_anonymizer_finishes_still_finishes_the_job(tmp_path):
    """With one anonymizer replica (as `umbra up` runs), the coordinator is killed while the dataset is being
    anonymized and started again only after the anonymizer's operation ended: the anonymizer could not commit the
    dataset's charge meanwhile (its ledger was down): it retried for 15 s (UMBRA_LEDGER_COMMIT_SECONDS), then
    ended its operation interrupted, which the resumed job starts again (sharding.INTERRUPTED_RETRIES). The job must
    succeed, with the charge committed once. (With two replicas the finishing call falls over to the other replica,
    which hides this.)"""
    stack = Stack(tmp_path / "home", replicas=1, commit_patience=15.0)
    (tmp_path / "home").mkdir()
    try:
        stack.start()
        tenant = tenant_with_faces(stack, "k-alone", tmp_path, 200)
        operation = tenant.create_job("protect-faces")
        review(tenant, "protect-faces")
        tenant.wait_for_stage(operation, STAGES["anonymizing"])
        running_shard_operation(stack, 0, "k-alone")
        kill_and_restart(stack, tenant, "protect-faces", [], wait=lambda: anonymizer_idle(stack, "k-alone"))
        done = tenant.result(operation)
        assert done.state == js.ProtectionJob.STATE_SUCCEEDED, tenant.job("protect-faces")
        check_charges(tenant, "protect-faces", len(SCRIPT), version=2)
        check_versions(tenant, done, 200)
    finally:
        stack.close()
