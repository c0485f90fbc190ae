"""umbra.anonymization.attacks on small synthetic face datasets: released images that are the originals leave the
retrained adversary well above chance and keep all the utility; released images that are one flat grey leave
the adversary at chance and the utility gone; an attribute that is a number, not a category, is skipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from support import commit_faces, commit_samples
from umbra.anonymization import attacks
from umbra.storage.local import LocalObjectStore

BUCKET = "umbra-acme"


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    store = LocalObjectStore(tmp_path_factory.mktemp("objects"))
    store.ensure_bucket(BUCKET)
    original = commit_faces(store, BUCKET, 160, size=32, seed=3)
    rows = [(s.key, s.split, dict(s.labels), png) for s, png in original.iter_images()]
    same = commit_samples(store, BUCKET, "same", 1, rows)
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(out, format="PNG")
    flat = [(key, split, labels, out.getvalue()) for key, split, labels, _ in rows]
    grey = commit_samples(store, BUCKET, "grey", 1, flat)
    return original, same, grey


def test_released_originals_leak_everything_and_keep_everything(versions):
    original, same, _ = versions
    figures = attacks.measure(original, same, protected=["gender"], kept=["glasses", "age"], seed=0)
    metrics = figures["metrics"]
    assert metrics["adversary_gender_chance"] == 0.5
    assert metrics["adversary_gender_bacc"] > 0.75  # the originals give gender away
    assert metrics["kept_glasses_utility_ratio"] == pytest.approx(1.0)  # the same images, the same seed
    assert "age" in figures["skipped"] and "values" in figures["skipped"]["age"]  # a number, not a category


def test_flat_grey_images_leave_the_adversary_at_chance(versions):
    original, _, grey = versions
    metrics = attacks.measure(original, grey, protected=["gender"], kept=["glasses"], seed=0)["metrics"]
    assert metrics["adversary_gender_bacc"] == pytest.approx(0.5, abs=0.05)
    assert metrics["kept_glasses_utility_ratio"] < 0.8


def test_the_judge_of_a_preview_recognises_originals_and_refuses_numbers(versions):
    original, _, _ = versions
    judge = attacks.AttributeJudge.train(original, "gender", seed=0)
    assert judge is not None and judge.chance == 0.5
    test = [(s.labels["gender"], png) for s, png in original.iter_images(split="test")][:16]
    assert judge.agreement([png for _, png in test], [value for value, _ in test]) > 0.7
    assert judge.agreement([test[0][1]], ["a value it never saw"]) == 0.0
    assert attacks.AttributeJudge.train(original, "age", seed=0) is None  # a number, not a category
