"""The public generator Umbra ships (umbra/anonymization/public/): its weights are the ones its card describes,
they reconstruct faces they never saw, a DP run starts from them, and what does not fit is refused by field."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

from umbra.anonymization import generator_training, public_generator
from umbra.anonymization.public_generator import FOLDER, PublicWeightsError
from umbra.dataset import synthetic
from umbra.diffusion.attributes import Attribute
from umbra.diffusion.generator import build, latent_clip_for, load_matching
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.diffusion.training import GeneratorHyper, train
from umbra.privacy.dp_sgd import DPSettings
from umbra.runtime.errors import InvalidInput

NAME = "public-faces-64"
GENDER = Attribute("gender", ("0", "1"))
SKIN = Attribute("skin_tone", ("1", "2", "3", "4", "5"))


@pytest.fixture(scope="module")
def shipped():
    return public_generator.load(NAME)


def unseen_faces(n: int) -> tuple[torch.Tensor, list[dict]]:
    """Synthetic faces of a seed pretraining never drew from (it drew from seed 1000)."""
    from umbra.classifiers.data import decode

    faces = list(synthetic.generate(n, size=64, seed=99))
    return torch.from_numpy(np.stack([decode(f.png, 64) for f in faces])), [f.attributes for f in faces]


def test_the_shipped_weights_are_the_ones_their_card_describes(shipped):
    card = shipped.card
    path = FOLDER / card.weights
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card.sha256
    assert path.stat().st_size < 20e6  # small enough to ship with the package
    assert shipped.config.image_size == 64 and shipped.config.latent_dim == 64
    assert shipped.config.latent_clip == latent_clip_for(64)
    assert card.data["digest"] and card.data["trained_on"] >= 500
    assert {"quality", "kept_utility"} <= set(card.autoencoder_alone)
    listed = public_generator.faces_path(FOLDER, NAME).read_text().split()  # one line per real face (some
    assert len(listed) == sum(s["faces"] for s in card.data["sources"] if s["source"] != "synthetic")  # repeat)
    assert public_generator.public_faces(NAME) == set(listed)


def test_weights_that_differ_from_their_card_are_refused_and_named(tmp_path, shipped):
    for suffix in (".json", ".safetensors"):
        shutil.copy(FOLDER / f"{NAME}{suffix}", tmp_path)
    weights = tmp_path / f"{NAME}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(PublicWeightsError, match="SHA-256") as error:
        public_generator.load(NAME, tmp_path)
    assert str(weights) in str(error.value) and shipped.card.sha256 in str(error.value)
    weights.unlink()
    with pytest.raises(PublicWeightsError, match="missing"):
        public_generator.load(NAME, tmp_path)
    with pytest.raises(PublicWeightsError, match="no card"):
        public_generator.load("public-faces-32", tmp_path)


def test_the_shipped_autoencoder_reconstructs_faces_it_never_saw(shipped):
    net = build(shipped.config)
    net.load_state_dict(shipped.weights)
    net.eval()
    images, _ = unseen_faces(32)
    with torch.no_grad():
        out = net.decode(net.encode(images))
    error = (out.float() - images.float()).div(255).pow(2).mean().item()
    average = (images.float().mean(0, keepdim=True) - images.float()).div(255).pow(2).mean().item()
    assert error < 0.25 * average, (error, average)  # far closer to each face than the average face is


def test_a_card_for_another_latent_or_image_size_is_refused_by_field_before_any_work():
    for size, latent, reason in ((64, 32, "has a 64-number latent, this run 32"),
                                 (32, 64, "is for 64 px images, this run for 32 px")):
        fresh = GeneratorConfig(image_size=size, attributes=(GENDER,), latent_dim=latent,
                                latent_clip=latent_clip_for(latent))
        with pytest.raises(InvalidInput) as error:
            generator_training._public_start(NAME, fresh)
        assert error.value.field == "initialize_from_public" and reason in str(error.value)


def test_a_dp_run_from_the_shipped_generator_keeps_its_autoencoder_and_conditions(shipped):
    net = build(GeneratorConfig(image_size=64, attributes=(GENDER, SKIN), latent_dim=64,
                                latent_clip=latent_clip_for(64)))
    assert load_matching(net, shipped.weights, shipped.config) == []  # gender and skin tone were pretrained
    for part in net.autoencoder:
        part.requires_grad_(False)
    images, attributes = unseen_faces(24)
    labels = torch.tensor([[GENDER.index(a["gender"]), SKIN.index(str(a["skin_tone"]))] for a in attributes])
    result = train(net, images, labels, GeneratorHyper(epochs=1, batch_size=8, physical_batch_size=8),
                   DPSettings(target_delta=1e-3, target_epsilon=8.0), seed=0)
    assert 0 < result.epsilon <= 8.0
    for name, value in shipped.weights.items():
        if name.startswith(("encoder.", "decoder.")):
            torch.testing.assert_close(net.state_dict()[name], value)
