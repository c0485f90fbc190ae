"""A labelled split of a committed version, read from the object store into tensors."""

from __future__ import annotations

import pytest

from support import commit_faces
from umbra.classifiers.data import load_split
from umbra.runtime.errors import InvalidInput


def test_load_split(store, bucket):
    reader = commit_faces(store, bucket, 40)
    train = load_split(reader, task="gender", split="train", image_size=32)
    test = load_split(reader, task="gender", split="test", image_size=64, classes=train.classes)
    assert len(test) == 10 and len(train) + len(load_split(reader, task="gender", split="val", image_size=32)) == 30
    assert train.classes == ["0", "1"]
    assert train.images.shape == (len(train), 3, 32, 32) and test.images.shape == (10, 3, 64, 64)
    assert 0.0 <= train.floats().min() and train.floats().max() <= 1.0
    with pytest.raises(InvalidInput, match="task"):
        load_split(reader, task="race", split="train", image_size=32)
    with pytest.raises(InvalidInput, match="split"):
        load_split(reader, task="gender", split="holdout", image_size=32)
