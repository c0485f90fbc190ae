"""Synthetic faces: deterministic bytes, the promised attributes and sizes, the utkface64-dev-like folder."""

import csv
import io

import numpy as np
import pytest
from PIL import Image

from umbra.dataset import synthetic

VALUES = {
    "gender": {"0", "1"},
    "skin_tone": {"1", "2", "3", "4", "5"},
    "glasses": {"0", "1"},
    "smile": {"0", "1"},
    "hair_color": {"black", "brown", "blonde", "red"},
}


def test_same_arguments_give_byte_identical_faces():
    first = list(synthetic.generate(5, size=32, seed=7))
    again = list(synthetic.generate(5, size=32, seed=7))
    assert [f.png for f in first] == [f.png for f in again]
    assert [f.attributes for f in first] == [f.attributes for f in again]
    assert [f.key for f in first] == [f"synth-{i:06d}" for i in range(5)]


def test_a_longer_run_starts_with_the_shorter_one_and_seeds_differ():
    short = list(synthetic.generate(2, size=32, seed=1))
    long = list(synthetic.generate(4, size=32, seed=1))
    other = list(synthetic.generate(2, size=32, seed=2))
    assert [f.png for f in long[:2]] == [f.png for f in short]
    assert all(a.png != b.png for a, b in zip(short, other, strict=True))
    assert len({f.png for f in long}) == 4


@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_sizes_are_rgb_pngs(size):
    (face,) = synthetic.generate(1, size=size, seed=3)
    image = Image.open(io.BytesIO(face.png))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (size, size))


def test_attributes_take_every_promised_value():
    faces = list(synthetic.generate(150, size=16, seed=0))
    for name, values in VALUES.items():
        assert {f.attributes[name] for f in faces} == values, name
    ages = [f.attributes["age"] for f in faces]
    assert all(isinstance(a, float) and a.is_integer() and 1 <= a <= 90 for a in ages)
    assert min(ages) < 15 and max(ages) > 75
    assert set(faces[0].attributes) == set(synthetic.COLUMNS)


def _mean_face(faces, wanted):
    return np.mean([np.asarray(Image.open(io.BytesIO(f.png)), dtype=np.float32) for f in faces if wanted(f)], axis=0)


def test_cues_are_visible():
    """Cheap check that attributes change pixels where they should (the report has the learnability figures)."""
    faces = list(synthetic.generate(200, size=32, seed=5))
    eyes = (slice(12, 17), slice(6, 26))
    glasses = _mean_face(faces, lambda f: f.attributes["glasses"] == "1")[eyes]
    plain = _mean_face(faces, lambda f: f.attributes["glasses"] == "0")[eyes]
    assert glasses.mean() < plain.mean() - 5  # dark frames
    mouth = (slice(20, 25), slice(11, 21))
    smiling = _mean_face(faces, lambda f: f.attributes["smile"] == "1")[mouth]
    closed = _mean_face(faces, lambda f: f.attributes["smile"] == "0")[mouth]
    assert np.abs(smiling - closed).mean() > 5


@pytest.mark.parametrize(
    "kwargs", [{"count": -1}, {"count": 1, "size": 15}, {"count": 1, "size": 257}, {"count": 1, "seed": -1}]
)
def test_bad_arguments(kwargs):
    count = kwargs.pop("count")
    with pytest.raises(ValueError):
        list(synthetic.generate(count, **kwargs))


def test_write_folder_is_laid_out_like_utkface64_dev(tmp_path):
    dest = synthetic.write_folder(tmp_path / "faces", 4, size=32, seed=9)
    with open(dest / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", "age", "gender", "skin_tone", "glasses", "smile", "hair_color"]
    faces = list(synthetic.generate(4, size=32, seed=9))
    for row, face in zip(rows[1:], faces, strict=True):
        assert row[0] == f"{face.key}.png"
        assert (dest / "images" / row[0]).read_bytes() == face.png
        assert row[1] == str(int(face.attributes["age"]))
        assert row[2:] == [face.attributes[c] for c in synthetic.COLUMNS[1:]]
    assert (dest / "labels.csv").read_bytes().count(b"\r") == 0


def test_write_folder_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        synthetic.write_folder(tmp_path, 1, size=16)
    assert synthetic.write_folder(tmp_path / "new", 0, size=16).joinpath("labels.csv").exists()
