"""A labelled split of a committed version, read from the object store into tensors."""

from __future__ import annotations

import hashlib

import pytest

from umbra.dataset import manifest as mf
from umbra.dataset import synthetic
from umbra.dataset.shards import ShardWriter
from umbra.runtime.errors import InvalidInput
from umbra.storage import keys
from umbra.storage.datasets import DatasetReader
from umbra.classifiers.data import load_split


def commit_faces(store, bucket: str, count: int) -> DatasetReader:
    shard_sha: dict[str, str] = {}

    def save(name: str, data: bytes) -> None:
        store.put(bucket, keys.shard("faces", 1, name), data)
        shard_sha[name] = hashlib.sha256(data).hexdigest()

    writer = ShardWriter(save, max_bytes=32 * 1024)
    samples = []
    for i, face in enumerate(synthetic.generate(count, size=32, seed=2)):
        labels = {k: synthetic.csv_value(v) for k, v in face.attributes.items()}
        samples.append(writer.add(mf.Sample(key=face.key, shard="", split="test" if i % 4 == 0 else "train",
                                            sha256=hashlib.sha256(face.png).hexdigest(), size=len(face.png),
                                            labels=labels), face.png))
    header = mf.Header(image_size=32, label_columns=sorted(samples[0].labels), attribute_columns=[],
                       shards=writer.close(), samples=count, shard_sha256=shard_sha)
    store.put(bucket, keys.manifest("faces", 1), mf.dumps(header, samples))
    return DatasetReader(store, bucket, "faces", 1)


def test_load_split(store, bucket):
    reader = commit_faces(store, bucket, 40)
    train = load_split(reader, task="gender", split="train", image_size=32)
    test = load_split(reader, task="gender", split="test", image_size=64, classes=train.classes)
    assert len(train) == 30 and len(test) == 10 and train.classes == ["0", "1"]
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (10, 3, 64, 64)
    assert 0.0 <= train.floats().min() and train.floats().max() <= 1.0
    with pytest.raises(InvalidInput, match="task"):
        load_split(reader, task="race", split="train", image_size=32)
    with pytest.raises(InvalidInput, match="split"):
        load_split(reader, task="gender", split="val", image_size=32)
