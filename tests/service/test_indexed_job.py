"""A dataset version anonymized as a Kubernetes Indexed Job would run it: `umbra job anonymize` run by hand as two
processes, index 1 then index 0 of 2 (JOB_COMPLETION_INDEX, as Kubernetes sets it), on the real S3 server, charging
the coordinator's privacy ledger. They write the same shards, upload manifest and record as one anonymizer replica
answering AnonymizeDataset alone; the index that writes the last shard finishes the version, a retried index finds
it finished and computes nothing, and the coordinator commits it. Bad settings are refused naming the variable or
field, with exit status 2 (the chart's podFailurePolicy fails such an index without retrying it).

The processes run the real command, so the shards are the real size (256 samples): 600 faces of 16 px make 3 shards
(index 0 writes shard 0, index 1 shards 1 and 2), with a tiny random generator and 2 denoising steps.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from google.protobuf import json_format

from support import SERVICE_TOKEN, start_service, write_tiny_generator
from umbra.anonymization.shards import SHARD_SAMPLES
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.services.anonymizer import indexed_job
from umbra.storage import keys

FACES = 600
SHARDS = -(-FACES // SHARD_SAMPLES)
SOURCE = refs_pb2.DatasetRef(dataset="datasets/faces", version=1)


# --- which shards an index writes, and what is refused before any work ------------------------------------------


@pytest.mark.parametrize("completions", [1, 2, 3, 7, 10])
@pytest.mark.parametrize("total", [0, 1, 2, 5, 9, 100])
def test_the_indices_ranges_are_contiguous_and_cover_every_shard_once(total, completions):
    ranges = [indexed_job.index_shards(i, completions, total) for i in range(completions)]
    assert [s for r in ranges for s in r] == list(range(total))
    assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1


def test_index_one_of_two_takes_the_upper_half():
    assert indexed_job.index_shards(0, 2, SHARDS) == range(0, 1) and indexed_job.index_shards(1, 2, 3) == range(1, 3)


@pytest.fixture
def request_file(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json_format.MessageToJson(dataset_request(2)))
    return path


def refused(capsys, argv: list[str], **env: str) -> str:
    base = {"UMBRA_SERVICE_TOKEN": SERVICE_TOKEN, "JOB_COMPLETION_INDEX": "0", "UMBRA_JOB_COMPLETIONS": "2",
            "UMBRA_JOB_TENANT": "acme"}
    assert indexed_job.main(argv, {k: v for k, v in (base | env).items() if v is not None}) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("env", "named"), [
    ({"JOB_COMPLETION_INDEX": None}, "JOB_COMPLETION_INDEX: is not set"),
    ({"JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX: 2 is out of range"),
    ({"JOB_COMPLETION_INDEX": "-1"}, "JOB_COMPLETION_INDEX: -1 is below 0"),
    ({"JOB_COMPLETION_INDEX": "one"}, "JOB_COMPLETION_INDEX: 'one' is not a whole number"),
    ({"UMBRA_JOB_COMPLETIONS": None}, "UMBRA_JOB_COMPLETIONS: is not set"),
    ({"UMBRA_JOB_COMPLETIONS": "0"}, "UMBRA_JOB_COMPLETIONS: 0 is below 1"),
    ({"UMBRA_JOB_TENANT": ""}, "UMBRA_JOB_TENANT: is not set"),
    ({"UMBRA_SERVICE_TOKEN": "short"}, "UMBRA_SERVICE_TOKEN"),
])
def test_bad_settings_are_refused_naming_the_variable(capsys, request_file, env, named):
    assert named in refused(capsys, ["--request", str(request_file)], **env)


def test_a_request_that_cannot_be_read_is_refused_naming_it(capsys, tmp_path, request_file):
    assert "UMBRA_JOB_REQUEST: is not set" in refused(capsys, [])
    assert "--request: " in refused(capsys, ["--request", str(tmp_path / "absent.json")])
    (tmp_path / "bad.json").write_text('{"settings": {"steps": "many"}}')
    assert "is not an AnonymizeDatasetRequest" in refused(capsys, ["--request", str(tmp_path / "bad.json")])
    (tmp_path / "empty.json").write_text("{}")
    assert "dataset: is required" in refused(capsys, ["--request", str(tmp_path / "empty.json")])
    sharded = dataset_request(2, shards=[0])
    (tmp_path / "sharded.bin").write_bytes(sharded.SerializeToString())  # the binary message is read too
    assert "shards: must be empty" in refused(capsys, ["--request", str(tmp_path / "sharded.bin")])


# --- two indices by hand, on the real S3 server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory, s3_server):
    home = tmp_path_factory.mktemp("indexed-job")
    tenant = f"job-{secrets.token_hex(4)}"  # the S3 server outlives the test: a bucket of its own
    s3 = {"UMBRA_STORE": "s3", "UMBRA_S3_ENDPOINT": s3_server.endpoint, "UMBRA_S3_ACCESS_KEY": s3_server.access_key,
          "UMBRA_S3_SECRET_KEY": s3_server.secret_key}
    coordinator = start_service("coordinator", home, tenant, budget=(1e5, 0.1), **s3)
    anonymizer = start_service("anonymizer", home, tenant, coordinator=coordinator, **s3)
    try:
        faces = synthetic.write_folder(home / "faces", FACES, size=16, seed=4)
        DatasetsClient(coordinator.channel()).upload(faces, "faces", progress=False, policy=SizePolicy(size=16))
        store = s3_server.store()
        write_tiny_generator(store, keys.bucket(tenant))
        yield coordinator, anonymizer, store, home, tenant, s3
    finally:
        for served in (anonymizer, coordinator):
            served.running.stop(grace=0)


def dataset_request(version: int, **fields) -> an.AnonymizeDatasetRequest:
    settings = an.AnonymizationSettings(generator=refs_pb2.ModelRef(model="models/gen", version=1),
                                        protected_attributes=["gender"], kept_attributes=["age"], intensity=0.75,
                                        steps=2, seed=5)
    return an.AnonymizeDatasetRequest(settings=settings, dataset=SOURCE, output_dataset="datasets/faces",
                                      output_version=version, **fields)


def reserve(coordinator) -> int:
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel())
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent="datasets/faces", shard_count=1),
                                             timeout=30).dataset_version
    return int(reserved.name.rsplit("/", 1)[1])


def written(store, bucket: str, version: int) -> dict[str, bytes]:
    """What a run left under the version, less run.json (the fingerprint, which names the output version)."""
    prefix = keys.version_prefix("faces", version)
    return {info.key.removeprefix(prefix): store.get(bucket, info.key) for info in store.list(bucket, prefix)
            if not info.key.endswith("/run.json")}


def charges(coordinator, version: int) -> list[ls.LedgerEntry]:
    entries = ledger_service_pb2_grpc.LedgerServiceStub(coordinator.channel()).ListLedgerEntries(
        ls.ListLedgerEntriesRequest(), timeout=30).entries
    return [e for e in entries if f"/datasets/faces/versions/{version}/" in e.request_id]


def job_index(system, request_path, index: int, completions: int = 2) -> dict:
    """`umbra job anonymize` as its own process, as an Indexed Job's pod runs it; its one-line summary."""
    coordinator, _, _, home, tenant, s3 = system
    env = dict(os.environ, UMBRA_HOME=str(home / f"index-{index}"), UMBRA_SERVICE_TOKEN=SERVICE_TOKEN,
               UMBRA_COORDINATOR_URL=coordinator.target, JOB_COMPLETION_INDEX=str(index),
               UMBRA_JOB_COMPLETIONS=str(completions), UMBRA_JOB_TENANT=tenant, **s3)
    done = subprocess.run([sys.executable, "-m", "umbra.cli.main", "job", "anonymize", "--request", str(request_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_indices_write_the_bytes_of_one_replica(system):
    coordinator, anonymizer, store, home, tenant, _ = system
    bucket = keys.bucket(tenant)
    reference = reserve(coordinator)
    channel = anonymizer.channel()
    op = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel).AnonymizeDataset(dataset_request(reference),
                                                                                      timeout=60).operation
    alone = OperationsClient(channel).result(op.name, an.AnonymizationResult, poll_seconds=0.2, timeout=300)
    expected = written(store, bucket, reference)
    assert alone.image_count == FACES and SHARDS == 3
    assert len([k for k in expected if k.startswith("upload/shards/")]) == SHARDS

    version = reserve(coordinator)
    request_path = home / "request.json"
    request_path.write_text(json_format.MessageToJson(dataset_request(version)))
    first = job_index(system, request_path, 1)  # shards 1 and 2; shard 0 is not written yet: it does not finish
    assert (first["shards"], first["images"], first["finished"]) == ([1, 3], FACES - SHARD_SAMPLES, False)
    assert sorted(k for k in written(store, bucket, version) if k.startswith("upload/")) == [
        "upload/shards/shard-000001.tar", "upload/shards/shard-000002.tar"]
    [charge] = charges(coordinator, version)
    assert charge.state == privacy_pb2.PRIVACY_CHARGE_STATE_RESERVED  # counted, left for the finishing index

    last = job_index(system, request_path, 0)  # shard 0, the last one: it finishes the version
    assert (last["shards"], last["images"], last["finished"]) == ([0, 1], SHARD_SAMPLES, True)
    assert last["record"].endswith("private/anonymization-record.json")
    assert written(store, bucket, version) == expected  # every shard, the upload manifest and the record
    [charge] = charges(coordinator, version)  # one charge, shared by both indices
    assert charge.state == privacy_pb2.PRIVACY_CHARGE_STATE_COMMITTED

    again = job_index(system, request_path, 1)  # a retried index: the version is finished, nothing is computed
    assert again["finished"] and again["images"] == FACES - SHARD_SAMPLES
    assert written(store, bucket, version) == expected

    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator.channel())
    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(
        name=f"datasets/faces/versions/{version}"), timeout=30)
    committed = OperationsClient(coordinator.channel()).result(commit.operation.name, cds.DatasetVersion,
                                                               poll_seconds=0.2, timeout=120)
    assert committed.sample_count == FACES
