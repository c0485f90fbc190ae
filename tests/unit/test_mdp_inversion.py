"""The inversion attack used to measure MDP: a real optimization that pulls features together under a
total-variation prior, pixels kept in range."""

import pytest
import torch

from umbra.classifiers.architectures import create
from umbra.classifiers.model_config import ModelConfig
from umbra.mdp.feature_matching import feature_loss, single_view
from umbra.mdp.inversion import invert_features, total_variation


def test_total_variation_is_zero_on_flat_images_and_grows_with_noise():
    flat = torch.full((2, 3, 8, 8), 0.3)
    noisy = flat + 0.2 * torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(total_variation(flat), torch.zeros(2))
    assert (total_variation(noisy) > 0.05).all()


def test_inversion_moves_toward_the_released_images_features():
    torch.manual_seed(0)
    extractor = create(ModelConfig("groupnorm_cnn", 2, 32, width=8))
    released = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    recovered = invert_features(extractor, released, start="gray", steps=40, learning_rate=0.05, tv_weight=0.0)
    assert recovered.shape == released.shape and recovered.min() >= 0 and recovered.max() <= 1
    with single_view(extractor, freeze=True), torch.no_grad():
        targets = extractor.features(released)
        before = feature_loss(extractor, torch.full_like(released, 0.5), targets)
        after = feature_loss(extractor, recovered, targets)
    assert (after < 0.5 * before).all()
    with pytest.raises(ValueError, match="start"):
        invert_features(extractor, released, start="noise")
