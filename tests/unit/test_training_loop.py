"""The training loop on small synthetic faces: it learns, DP-SGD reports the epsilon it promised, and a run
stopped after an epoch and resumed from its checkpoint reports exactly the epsilon of an uninterrupted run."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from umbra.classifiers.model_config import ModelConfig
from umbra.dataset import synthetic
from umbra.runtime.errors import InvalidInput
from umbra.classifiers.architectures import create
from umbra.classifiers.data import LabelledImages
from umbra.classifiers.loop import Hyperparameters, predict, train
from umbra.privacy.dp_sgd import DPSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faces() -> LabelledImages:
    """512 synthetic faces at 32 px labelled by `smile` (a clear cue: a few epochs learn it)."""
    images, labels = [], []
    for face in synthetic.generate(512, size=32, seed=11):
        images.append(np.asarray(Image.open(io.BytesIO(face.png)).convert("RGB")).transpose(2, 0, 1))
        labels.append(int(face.attributes["smile"]))
    return LabelledImages(torch.from_numpy(np.stack(images)), torch.tensor(labels), ["0", "1"],
                          [f"k{i}" for i in range(len(labels))])


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create(ModelConfig("groupnorm_cnn", 2, 32, width=16))


def test_plain_training_learns(faces):
    net = model()
    result = train(model=net, data=faces, hyper=Hyperparameters(epochs=10, batch_size=32, learning_rate=1e-3),
                   dp=None, seed=0)
    accuracy = (predict(net, faces) == faces.labels).float().mean().item()
    assert result.epsilon == 0 and result.steps == 10 * 16
    assert accuracy > 0.8, accuracy


def test_dp_reaches_its_target_and_resume_counts_every_step(faces):
    dp = DPSettings(target_epsilon=8.0, target_delta=1e-3, max_grad_norm=1.0)
    hyper = Hyperparameters(epochs=2, batch_size=64, physical_batch_size=32, learning_rate=3e-3)
    checkpoints = []
    whole = train(model=model(), data=faces, hyper=hyper, dp=dp, seed=0,
                  on_epoch=lambda report, checkpoint: checkpoints.append((report, checkpoint)))
    assert 0 < whole.epsilon <= 8.0 + 1e-6 and whole.accountant in ("prv", "rdp")
    assert whole.epsilon > 0.97 * 8.0  # the noise is calibrated for Opacus's real sampling rate: no budget wasted
    assert [r.epoch for r, _ in checkpoints] == [1, 2]
    assert checkpoints[0][0].epsilon < checkpoints[1][0].epsilon  # epsilon grows with the steps

    # "Kill" after epoch 1, then resume from its checkpoint in a fresh model and engine.
    resumed = train(model=model(), data=faces, hyper=hyper, dp=dp, seed=0, resume=checkpoints[0][1])
    assert resumed.steps == whole.steps
    assert resumed.epsilon == pytest.approx(whole.epsilon, rel=1e-9)


def test_bad_settings_are_refused_before_compute(faces):
    for hyper, dp, field in (
        (Hyperparameters(batch_size=10_000), None, "hyperparameters.batch_size"),
        (Hyperparameters(epochs=0), None, "hyperparameters.epochs"),
        (Hyperparameters(schedule="linear"), None, "hyperparameters.schedule"),
        (Hyperparameters(), DPSettings(target_epsilon=-1, target_delta=1e-5), "differential_privacy"),
        (Hyperparameters(), DPSettings(target_epsilon=1, target_delta=0.5), "differential_privacy.target_delta"),
    ):
        with pytest.raises(InvalidInput) as err:
            train(model=model(), data=faces, hyper=hyper, dp=dp, seed=0)
        assert err.value.field == field


def test_cosine_schedule_anneals_from_the_rate_to_zero():
    from umbra.classifiers.loop import learning_rate

    hyper = Hyperparameters(learning_rate=0.4, schedule="cosine")
    assert learning_rate(hyper, 0, 100) == pytest.approx(0.4)
    assert learning_rate(hyper, 50, 100) == pytest.approx(0.2)
    assert learning_rate(hyper, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(hyper, 120, 100) == pytest.approx(0.0, abs=1e-12)  # Poisson sampling may take extra steps
    assert learning_rate(Hyperparameters(learning_rate=0.4), 70, 100) == 0.4
