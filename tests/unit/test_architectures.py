import pytest
import torch
from opacus.validators import ModuleValidator

from umbra.classifiers.architectures import REGISTRY, ModelConfig, create


@pytest.mark.parametrize("architecture", sorted(REGISTRY))
@pytest.mark.parametrize("size", [32, 64])
def test_every_architecture_is_dp_compatible_and_exposes_features(architecture, size):
    config = ModelConfig(architecture, 3, size, width=8)
    model = create(config)
    assert ModuleValidator.validate(model, strict=False) == []  # no BatchNorm: Opacus can take it as it is
    x = torch.rand(2, 3, size, size)
    assert model(x).shape == (2, 3)
    assert torch.allclose(model.head(model.features(x)), model(x))
    assert ModelConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("config, message", [
    (ModelConfig("vgg", 2, 32), "architecture"),
    (ModelConfig("groupnorm_cnn", 2, 48), "image_size"),
    (ModelConfig("groupnorm_cnn", 1, 32), "num_classes"),
])
def test_bad_configs_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        create(config)
