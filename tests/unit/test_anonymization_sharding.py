"""Splitting an anonymization across replicas: how many output shards a source makes (the anonymizer's own rule),
how the coordinator deals them, and the request_ids it derives."""

from __future__ import annotations

import uuid

import pytest
from umbra.anonymization.shards import SHARD_SAMPLES, shard_count

from umbra.dataset import manifest as mf
from umbra.services.coordinator.sharding import deal, derived_request_id


def samples(complete: int, incomplete: int = 0) -> list[mf.Sample]:
    rows = [{"gender": "0", "age": "30"}] * complete + [{"gender": "1"}] * incomplete
    return [mf.Sample(key=f"k{i}", shard="shard-000000.tar", split="train", sha256="0" * 64, size=1, labels=labels)
            for i, labels in enumerate(rows)]


@pytest.mark.parametrize(("complete", "incomplete", "expected"), [
    (0, 5, 0), (1, 0, 1), (SHARD_SAMPLES, 0, 1), (SHARD_SAMPLES + 1, 0, 2), (2 * SHARD_SAMPLES, 40, 2),
])
def test_shards_are_counted_from_the_samples_that_have_every_attribute(complete, incomplete, expected):
    assert shard_count(samples(complete, incomplete), ["gender", "age"]) == expected


def test_samples_without_a_kept_value_are_not_counted_but_are_without_it():
    source = samples(SHARD_SAMPLES, 1)
    assert shard_count(source, ["gender", "age"]) == 1 and shard_count(source, ["gender"]) == 2


def test_shards_are_dealt_round_robin():
    assert deal(list(range(7)), [0, 1]) == {0: [0, 2, 4, 6], 1: [1, 3, 5]}
    assert deal([1, 3, 5], [0, 2]) == {0: [1, 5], 2: [3]}  # a failed replica's shards, to those left
    assert deal([4], [0, 1, 2]) == {0: [4]}  # a replica without shards gets no call


def test_derived_request_ids_are_stable_uuids_per_call():
    first = derived_request_id("job-1", "shards", 0, 0)
    assert first == derived_request_id("job-1", "shards", 0, 0) and uuid.UUID(first)
    others = {derived_request_id("job-1", "shards", 1, 0), derived_request_id("job-1", "shards", 0, 1),
              derived_request_id("job-1", "finish"), derived_request_id("job-2", "shards", 0, 0)}
    assert first not in others and len(others) == 4
