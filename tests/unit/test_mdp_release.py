"""Releasing MDP versions into a (local) object store: an interrupted run resumes at its last finished shard and
ends with exactly the bytes of an uninterrupted one; another request never mixes into a version; the first copy
of AugMDP is the MDP release of the same seed; collisions and committed outputs are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from support import commit_faces, write_extractor
from umbra.classifiers.architectures import create
from umbra.classifiers.registry import ModelRegistry
from umbra.dataset import manifest as mf
from umbra.mdp import release
from umbra.runtime.errors import Cancelled, FailedPrecondition, InvalidInput
from umbra.storage import keys
from umbra.storage.datasets import DatasetReader
from umbra.storage.local import LocalObjectStore

BUCKET = "umbra-acme"


@pytest.fixture
def store(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.ensure_bucket(BUCKET)
    commit_faces(store, BUCKET, 20, size=32, seed=5)
    write_extractor(store, BUCKET, "gender")
    return store


def job(store, version: int, **settings) -> release.Job:
    extractor = ModelRegistry(store).get(BUCKET, "gender", 1)
    values = {"steps": 3, "batch_size": 2, "seed": 4} | settings
    return release.plan(store, BUCKET, DatasetReader(store, BUCKET, "faces", 1), label_column="gender", split="",
                        extractor=extractor, settings=release.Settings(**values), output=("faces", version))


def extractor_of(store) -> torch.nn.Module:
    stored = ModelRegistry(store).get(BUCKET, "gender", 1)
    model = create(stored.config)
    model.load_state_dict(ModelRegistry(store).weights(BUCKET, "gender", 1))
    return model


def shard_hashes(store, version: int) -> dict[str, str]:
    header, _ = mf.loads(store.get(BUCKET, keys.upload_manifest("faces", version)).decode().splitlines())
    return header.shard_sha256


def test_an_interrupted_run_resumes_at_its_last_finished_shard(store):
    whole = release.run(job(store, 2), extractor_of(store))
    assert whole.samples == 20 and whole.shards == 3  # shards of four batches of 2

    shards_seen = []

    def stop_after_first_shard() -> bool:
        return bool(shards_seen) and shards_seen[-1] >= 1

    with pytest.raises(Cancelled):
        release.run(job(store, 3), extractor_of(store), cancelled=stop_after_first_shard,
                    progress=lambda done, total, shards, loss: shards_seen.append(shards))
    assert store.stat(BUCKET, keys.private("faces", 3, "parts/shard-000000.tar.json")) is not None
    first = store.get(BUCKET, keys.upload_shard("faces", 3, "shard-000000.tar"))

    reports = []
    resumed = release.run(job(store, 3), extractor_of(store), progress=lambda *report: reports.append(report))
    assert reports[0][0] == 8 and reports[0][2] == 1  # the first shard was taken as it was, not recomputed
    assert store.get(BUCKET, keys.upload_shard("faces", 3, "shard-000000.tar")) == first
    assert shard_hashes(store, 3) == shard_hashes(store, 2)  # the same bytes as the uninterrupted run
    assert resumed.feature_loss == pytest.approx(whole.feature_loss)
    assert not list(store.list(BUCKET, keys.version_prefix("faces", 3) + "private/parts/"))  # gone with the record
    record = json.loads(store.get(BUCKET, resumed.record_key))
    assert record["seed"] == 4 and len(record["samples"]) == 20 and record["method"] == "mdp"


def test_the_first_augmdp_copy_is_the_mdp_release_of_the_same_seed(store):
    release.run(job(store, 2), extractor_of(store))
    release.run(job(store, 3, copies=2), extractor_of(store))
    _, first = mf.loads(store.get(BUCKET, keys.upload_manifest("faces", 2)).decode().splitlines())
    _, both = mf.loads(store.get(BUCKET, keys.upload_manifest("faces", 3)).decode().splitlines())
    first, both = {s.key: s.sha256 for s in first}, {s.key: s.sha256 for s in both}
    assert len(both) == 40
    assert {k.removesuffix("-c0"): v for k, v in both.items() if k.endswith("-c0")} == first


def test_another_request_never_mixes_into_a_version(store):
    with pytest.raises(Cancelled):
        release.run(job(store, 2), extractor_of(store), cancelled=lambda: True)
    with pytest.raises(FailedPrecondition, match="another distortion request"):
        job(store, 2, seed=5)
    job(store, 2)  # the same request may resume


def test_outputs_that_cannot_be_written_are_refused(store):
    with pytest.raises(InvalidInput, match="versions are immutable"):
        job(store, 1)
    store.put(BUCKET, keys.manifest("faces", 4), b"{}")
    with pytest.raises(FailedPrecondition, match="already committed"):
        job(store, 4)
    reader = DatasetReader(store, BUCKET, "faces", 1)
    first = next(iter(reader.samples()))
    long = dataclasses.replace(first, key="k" * 95)  # a valid key, but not with a copy suffix
    store.put(BUCKET, keys.manifest("faces", 1), mf.dumps(reader.header, [*reader.samples(), long]))
    with pytest.raises(InvalidInput, match="released key would be invalid"):
        job(store, 5, copies=2)
