"""Reading a committed version streams it: one GET per shard, every shard's checksum verified, and memory that
stays flat as the dataset grows (measured with tracemalloc on both backends)."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from umbra.dataset import manifest as mf
from umbra.dataset import synthetic
from umbra.dataset.shards import ShardWriter
from umbra.storage import keys
from umbra.storage.base import ChecksumMismatch
from umbra.storage.datasets import DatasetReader

FACES = [f.png for f in synthetic.generate(64, size=32, seed=9)]


def write_version(store, bucket: str, dataset: str, count: int) -> None:
    """Writes `count` images as a committed version straight into the store (what a commit leaves)."""
    shard_sha: dict[str, str] = {}

    def save(name: str, data: bytes) -> None:
        store.put(bucket, keys.shard(dataset, 1, name), data)
        shard_sha[name] = hashlib.sha256(data).hexdigest()

    writer = ShardWriter(save, max_bytes=64 * 1024)
    samples = []
    for i in range(count):
        image = FACES[i % len(FACES)]
        samples.append(writer.add(mf.Sample(key=f"img-{i:06d}", shard="", split="train",
                                            sha256=hashlib.sha256(image).hexdigest(), size=len(image)), image))
    shards = writer.close()
    header = mf.Header(image_size=32, label_columns=[], attribute_columns=[], shards=shards, samples=count,
                       shard_sha256=shard_sha)
    store.put(bucket, keys.manifest(dataset, 1), mf.dumps(header, samples))


def peak_bytes_while_reading(store, bucket: str, dataset: str) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = sum(1 for _ in DatasetReader(store, bucket, dataset, 1).iter_images())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


def test_memory_stays_flat_as_the_dataset_grows(store, bucket):
    write_version(store, bucket, "small", 200)
    write_version(store, bucket, "large", 1600)
    small_count, small_peak = peak_bytes_while_reading(store, bucket, "small")
    large_count, large_peak = peak_bytes_while_reading(store, bucket, "large")
    assert (small_count, large_count) == (200, 1600)
    # 8x the images (and bytes) must not mean 8x the memory: one shard and one shard's manifest lines at a time.
    assert large_peak < 2 * small_peak, (small_peak, large_peak)


def test_a_shard_that_changed_after_commit_is_reported(store, bucket):
    write_version(store, bucket, "tampered", 50)
    reader = DatasetReader(store, bucket, "tampered", 1)
    victim = keys.shard("tampered", 1, reader.header.shards[0])
    data = bytearray(store.get(bucket, victim))
    data[600] ^= 0xFF
    store.put(bucket, victim, bytes(data))  # a new object with its own checksum, but not the manifest's
    with pytest.raises(ChecksumMismatch):
        for _ in reader.iter_images():
            pass
