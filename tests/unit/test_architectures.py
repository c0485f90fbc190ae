import pytest
import torch
from opacus.validators import ModuleValidator

from umbra.classifiers import loop
from umbra.classifiers.architectures import REGISTRY, create
from umbra.classifiers.data import LabelledImages
from umbra.classifiers.model_config import ModelConfig
from umbra.privacy import dp_sgd

SIZES = {name: [32] if name.startswith("scatternet") else [32, 64] for name in REGISTRY}


@pytest.mark.parametrize("architecture, size", [(a, s) for a in sorted(REGISTRY) for s in SIZES[a]])
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
    (ModelConfig("scatternet_linear", 2, 64), "32 px"),
])
def test_bad_configs_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        create(config)


@pytest.mark.parametrize("dp", [None, dp_sgd.DPSettings(target_delta=1e-3, target_epsilon=8.0)])
def test_a_fixed_stem_is_computed_once_and_only_the_rest_is_trained(dp):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    data = LabelledImages(images, (images.float().mean((1, 2, 3)) > 127.5).long(), ["0", "1"], [])
    model = create(ModelConfig("scatternet_cnn", 2, 32, width=8))
    stem_before = {k: v.clone() for k, v in model.stem.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    checkpoints = []
    result = loop.train(model=model, data=data, seed=0, dp=dp, on_epoch=lambda _, c: checkpoints.append(c),
                        hyper=loop.Hyperparameters(epochs=2, batch_size=16, physical_batch_size=8, learning_rate=1e-2))
    assert result.steps > 0 and (result.epsilon > 0) == (dp is not None)
    assert not torch.equal(model.head.weight, head_before)  # trained in place, through the shared parameters
    assert all(torch.equal(v, model.stem.state_dict()[k]) for k, v in stem_before.items())
    assert set(checkpoints[-1].model) == set(model.state_dict())  # checkpoints hold the whole network
    x = data.floats()
    with torch.inference_mode():
        assert torch.allclose(model.eval()(x), model.trainable()(model.stem(x)), atol=1e-6)


def test_mirror_averaging_applies_at_inference_only():
    torch.manual_seed(0)
    plain = create(ModelConfig("groupnorm_cnn", 2, 32, width=8))
    mirrored = create(ModelConfig("groupnorm_cnn", 2, 32, width=8, mirror_average=True))
    mirrored.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(mirrored.train()(x), plain.train()(x))
    plain.eval()
    expected = plain.head((plain.features(x) + plain.features(x.flip(-1))) / 2)
    assert torch.allclose(mirrored.eval()(x), expected, atol=1e-6)
    assert torch.allclose(mirrored(x), mirrored(x.flip(-1)), atol=1e-5)  # mirror-invariant by construction
