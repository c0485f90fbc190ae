"""Public pretraining (umbra.anonymization.pretrain) end to end on a few steps: the files it writes and their card,
that a run is deterministic for a seed and resumes exactly from its checkpoint, and the data it refuses."""

import csv
import hashlib
import json

import pytest

from umbra.anonymization import pretrain, public_generator
from umbra.dataset import synthetic

pytestmark = pytest.mark.slow

# A few steps, a few epochs of the denoiser, no utility classifiers: seconds, not hours.
TINY = ["--synthetic", "560", "--steps", "4", "--adversarial-from", "2", "--denoiser-epochs", "1",
        "--denoiser-batch", "64", "--classifier-epochs", "0", "--checkpoint-every", "2"]


def run(tmp_path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    assert pretrain.main([*TINY, "--out", str(out), "--checkpoints", str(tmp_path / f"{name}-checkpoints"),
                          *extra]) == 0
    return json.loads(public_generator.card_path(out, pretrain.NAME).read_text())


def test_a_tiny_run_writes_weights_a_card_is_deterministic_and_resumes_exactly(tmp_path):
    card = run(tmp_path, "a")
    weights = tmp_path / "a" / card["weights"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["sha256"]
    assert card["config"]["image_size"] == 64 and card["config"]["latent_dim"] == 64
    assert [a["name"] for a in card["config"]["attributes"]] == ["gender", "skin_tone", "age"]
    assert card["data"]["trained_on"] == 504 and card["data"]["sources"][0]["held_out"] == 56
    assert card["training"]["autoencoder_steps"] == 4 and card["curves"]["autoencoder"]["step"] == [4]
    assert len(card["curves"]["denoiser_loss"]) == 1
    loaded = public_generator.load(pretrain.NAME, tmp_path / "a")  # the digest checks out
    assert loaded.config.latent_dim == 64 and "decoder.expand.weight" in loaded.weights
    assert run(tmp_path, "b")["sha256"] == card["sha256"]  # the same seed gives the same bytes
    # a run stopped after 2 steps resumes from its checkpoint to the same weights as the straight run
    out, checkpoints = tmp_path / "resumed", tmp_path / "resumed-checkpoints"
    common = [*TINY, "--out", str(out), "--checkpoints", str(checkpoints)]
    assert pretrain.main([*common, "--steps", "2"]) == 0
    stopped = json.loads(public_generator.card_path(out, pretrain.NAME).read_text())["sha256"]
    assert stopped != card["sha256"] and (checkpoints / "autoencoder.pt").exists()
    assert pretrain.main([*common, "--steps", "4"]) == 0
    assert json.loads(public_generator.card_path(out, pretrain.NAME).read_text())["sha256"] == card["sha256"]
    # a checkpoint of other settings is not resumed from
    assert pretrain.main([*common, "--learning-rate", "0.001"]) == 2


def write_faces(folder, count: int):
    synthetic.write_folder(folder, count, size=64, seed=7)
    return folder


def test_too_few_faces_and_missing_labels_are_refused(tmp_path, capsys):
    few = write_faces(tmp_path / "few", 40)
    assert pretrain.main(["--faces", str(few), "--synthetic", "0", "--out", str(tmp_path / "out")]) == 2
    assert "at least 500 faces" in capsys.readouterr().err
    (few / "labels.csv").rename(few / "labels.old")
    assert pretrain.main(["--faces", str(few), "--synthetic", "600", "--out", str(tmp_path / "out")]) == 2
    assert "labels missing (no labels.csv)" in capsys.readouterr().err
    rows = list(csv.reader((few / "labels.old").read_text().splitlines()))
    gender = rows[0].index("gender")
    rows[3][gender] = ""
    (few / "labels.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    assert pretrain.main(["--faces", str(few), "--synthetic", "600", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "line 4" in err and rows[3][0] in err and "labels missing for gender" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_faces_are_taken_by_digest_so_any_copy_of_a_folder_gives_the_same_ones(tmp_path):
    folder = write_faces(tmp_path / "faces", 30)
    _, columns, digests, summary = pretrain.read_folder(f"{folder}:10", 64, 0.1)
    assert len(digests) == 10 and digests == sorted(digests) and summary["held_out"] == 1
    every = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").iterdir())
    assert digests == every[:10] and len(columns["gender"]) == 10
