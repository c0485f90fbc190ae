"""The pretrained face recognizer (dlib's, shipped by face-recognition-models) and the re-identification figures,
on synthetic faces only."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from umbra.anonymization import reidentification
from umbra.anonymization.reidentification import DIMENSION, FaceRecognizer, recognizer, reidentify
from umbra.dataset.synthetic import generate

COUNT = 10


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(face.png)).convert("RGB"))
                     for face in generate(COUNT, size=64, seed=0)])


@pytest.fixture(scope="module")
def originals(faces) -> np.ndarray:
    return recognizer().embed(faces)


@pytest.mark.slow
def test_embeddings_are_128_d_and_deterministic(faces, originals):
    assert originals.shape == (COUNT, DIMENSION) and originals.dtype == np.float32
    assert np.isfinite(originals).all()
    again = FaceRecognizer().embed(faces[3:5])  # another instance, a smaller batch: the same rows
    np.testing.assert_array_equal(again, originals[3:5])


@pytest.mark.slow
def test_a_face_against_itself_is_rank_1_at_distance_0(originals):
    result = reidentify(originals, originals)
    assert result.rank1 == 1.0 and result.verify_rate == 1.0
    np.testing.assert_array_equal(result.distances, np.zeros(COUNT))
    np.testing.assert_array_equal(result.ranks, np.ones(COUNT))


@pytest.mark.slow
def test_a_mirrored_face_is_closer_to_its_own_original_than_to_the_others(faces, originals):
    mirrored = recognizer().embed(faces[:, :, ::-1].copy())
    result = reidentify(mirrored, originals)
    distances = np.linalg.norm(mirrored[:, None, :] - originals[None, :, :], axis=2)
    others = distances[~np.eye(COUNT, dtype=bool)]
    assert result.distances.mean() < others.mean() - 0.15  # measured 0.23 against 0.56
    assert result.rank1 >= 0.75  # measured 1.0


@pytest.mark.slow
def test_a_slightly_noisy_face_keeps_its_identity(faces, originals):
    rng = np.random.default_rng(0)
    noisy = np.clip(faces.astype(int) + rng.integers(-3, 4, faces.shape), 0, 255).astype(np.uint8)
    result = reidentify(recognizer().embed(noisy), originals)
    assert result.verify_rate == 1.0  # measured: at most 0.38 from its original
    assert result.rank1 >= 0.9  # measured 1.0


def test_embed_checks_its_input_and_needs_no_model_for_nothing():
    fresh = FaceRecognizer()
    assert fresh.embed(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, DIMENSION)
    assert fresh._models is None  # nothing loaded for an empty batch
    for bad in (np.zeros((2, 64, 64, 3), np.float32), np.zeros((64, 64, 3), np.uint8),
                np.zeros((2, 64, 64), np.uint8)):
        with pytest.raises(ValueError, match="N×H×W×3"):
            fresh.embed(bad)


def test_reidentify_by_hand():
    originals = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [10.0, 10.0]])  # the last: a distractor
    released = np.array([[0.9, 0.0],   # own 0.9; original 1 is at 0.1: rank 2, not verified
                         [1.0, 0.5],   # own 0.5; the next is 1.118 away: rank 1, verified
                         [0.0, 2.3]])  # own 0.7; the next is 2.3 away: rank 1, not verified (0.7 >= 0.6)
    result = reidentify(released, originals)
    assert result.rank1 == pytest.approx(2 / 3) and result.verify_rate == pytest.approx(1 / 3)
    np.testing.assert_allclose(result.distances, [0.9, 0.5, 0.7])
    np.testing.assert_array_equal(result.ranks, [2, 1, 1])
    assert result.gallery == 4 and result.threshold == 0.6
    assert reidentify(released, originals, threshold=1.0).verify_rate == 1.0

    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["rank1"] == pytest.approx(2 / 3) and as_dict["ranks"] == [2, 1, 1]
    assert as_dict["count"] == 3 and as_dict["gallery"] == 4


def test_a_tie_counts_for_the_attacker_and_a_nearer_distractor_against():
    originals = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.4]])
    released = np.array([[0.5, 0.0],    # 0.5 from its own original and from original 1: still rank 1
                         [0.0, 0.45]])  # its own is 1.10 away; originals 0 (0.45) and 2 (0.05) are nearer: rank 3
    result = reidentify(released, originals)
    np.testing.assert_array_equal(result.ranks, [1, 3])
    assert result.rank1 == 0.5 and result.verify_rate == 0.5


def test_reidentify_refuses_mismatched_embeddings():
    with pytest.raises(ValueError, match="only 1 originals"):
        reidentify(np.zeros((2, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="N×D"):
        reidentify(np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="no released"):
        reidentify(np.zeros((0, 4)), np.zeros((2, 4)))


def test_diversity_compares_how_far_apart_released_faces_are_with_their_originals():
    rng = np.random.default_rng(0)
    originals = rng.normal(size=(20, 128))
    assert reidentification.diversity(originals, originals) == pytest.approx(1.0)
    assert reidentification.diversity(0.5 * originals + 3.0, originals) == pytest.approx(0.5)
    # one face released for everyone: no diversity at all
    assert reidentification.diversity(np.repeat(originals[:1], 20, axis=0), originals) == 0.0
    with pytest.raises(ValueError, match="N >= 2"):
        reidentification.diversity(originals[:1], originals)
