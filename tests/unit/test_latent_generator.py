"""The latent generator (umbra.diffusion.latent) and its image mechanism: the ε of noising a latent of norm C,
against values worked by hand, the norm bound the sensitivity rests on, training (plain, DP, from a public
generator with its autoencoder kept) and re-generation at the generator's size."""

import copy
import math

import pytest
import torch

from umbra.anonymization import anonymize as anon
from umbra.anonymization import privatize
from umbra.diffusion.attributes import Attribute
from umbra.diffusion.generator import build, latent_clip_for, load_matching
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.diffusion.latent import LatentGenerator
from umbra.diffusion.sampling import regenerate, schedule_for
from umbra.diffusion.training import GeneratorHyper, train
from umbra.privacy import composition, mechanisms
from umbra.privacy.dp_sgd import DPSettings
from umbra.runtime.errors import InvalidInput

GENDER = Attribute("gender", ("0", "1"))
RACE = Attribute("race", ("0", "1", "2"))


def tiny(attributes=(GENDER,), size: int = 16, latent_dim: int = 8) -> LatentGenerator:
    torch.manual_seed(0)
    return build(GeneratorConfig(image_size=size, attributes=tuple(attributes), latent_dim=latent_dim, norm_groups=4))


def faces(n: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(n)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator),
            torch.randint(0, 2, (n, 1), generator=generator))


def test_latent_mu_by_hand():
    # ᾱ = 0.2, C = 1: 2·1·sqrt(0.2)/sqrt(0.8) = 2·0.5 = 1
    assert mechanisms.latent_noise_mu(0.2, 1.0) == pytest.approx(1.0)
    # ᾱ = 0.5, C = 0.5: 2·0.5·1 = 0.5·2 = 1; C = 2: 4
    assert mechanisms.latent_noise_mu(0.5, 0.5) == pytest.approx(1.0)
    assert mechanisms.latent_noise_mu(0.5, 2.0) == pytest.approx(4.0)
    for bad in (0.0, 1.0):
        with pytest.raises(InvalidInput):
            mechanisms.latent_noise_mu(bad, 1.0)
    with pytest.raises(InvalidInput, match="latent_clip"):
        mechanisms.latent_noise_mu(0.5, 0.0)


def test_latent_epsilon_by_hand():
    """ε at δ = 1e-6 for μ = 1 solves Φ(-ε + 1/2) - e^ε Φ(-ε - 1/2) = 1e-6: 4.88655 (worked with a root finder on
    that formula, outside this code); two previews of one face compose to μ = sqrt(2): 7.28608."""
    cost = privatize.latent_cost(0.2, 500, 1.0)
    assert cost.epsilon == pytest.approx(4.88655, abs=1e-4) and cost.delta == 1e-6
    assert cost.parameters["mu"] == pytest.approx(1.0) and cost.accountant == "gdp"
    assert mechanisms.gaussian_epsilon(math.sqrt(2), 1e-6) == pytest.approx(7.28608, abs=1e-4)
    # never rounded in our favour: the basic composition of two is above the exact GDP one
    twice = composition.basic([cost, cost], "two previews")
    assert twice.epsilon == pytest.approx(2 * 4.88655, abs=2e-4)
    assert twice.epsilon > 7.28608


def test_latent_dimension_does_not_enter_but_pixels_do():
    def image_epsilon(latent_dim: int) -> float:
        config = GeneratorConfig(image_size=64, attributes=(GENDER,), latent_dim=latent_dim, latent_clip=8.0)
        return anon.check(anon.Generator("gen", 1, config, {}), dataset_id="faces", label_columns=["gender"],
                          image_size=64, protected=["gender"], kept=[], intensity=0.75, steps=0,
                          seed=1).cost.image.epsilon

    assert image_epsilon(16) == image_epsilon(256)
    latent = privatize.latent_cost(0.00779, 691, 1.0).epsilon
    pixel = privatize.image_cost(0.00779, 691, 3 * 64 * 64).epsilon
    assert latent < 1.0 < 100 < pixel


def test_every_latent_has_norm_c_so_two_faces_differ_by_at_most_2c():
    net = build(GeneratorConfig(image_size=16, attributes=(GENDER,), latent_dim=8, latent_clip=0.7, norm_groups=4))
    images, _ = faces(16)
    with torch.no_grad():
        z = net.encode(images)
    torch.testing.assert_close(z.norm(dim=1), torch.full((16,), 0.7))
    assert torch.cdist(z, z).max() <= 2 * 0.7 + 1e-6
    assert net.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)).norm().item() == pytest.approx(0.7)


def test_a_latent_generator_prices_its_images_by_the_latent_mechanism():
    config = GeneratorConfig(image_size=64, attributes=(GENDER,))
    request = anon.check(anon.Generator("gen", 1, config, {}), dataset_id="faces", label_columns=["gender"],
                         image_size=64, protected=["gender"], kept=[], intensity=0.75, steps=0, seed=1)
    image = request.cost.image
    assert image.mechanism == "gaussian" and image.parameters["latent_clip"] == 8.0 == latent_clip_for(64)
    alpha = request.schedule.alpha_bar
    assert request.schedule.start == 799 == image.parameters["timestep"]  # the DDIM grid of 10 ending at 99
    assert image.parameters["mu"] == pytest.approx(2 * 8.0 * math.sqrt(alpha / (1 - alpha)))
    assert 2.5 < image.epsilon < 3.0  # the default intensity, against 94 for the pixel generator at 32 px


def test_plain_training_lowers_both_losses():
    net = tiny()
    images, labels = faces(32)
    before = copy.deepcopy(net)
    result = train(net, images, labels, GeneratorHyper(epochs=6, batch_size=8, ema_decay=0), None, seed=0)
    x = images.float().div(127.5).sub(1)
    error = [(m.decode_scaled(m.encode_scaled(x)) - x).pow(2).mean().item() for m in (before, net)]
    assert error[1] < error[0]
    assert math.isfinite(result.final_loss)


def test_dp_training_from_a_public_generator_keeps_its_autoencoder():
    public = tiny()
    train(public, *faces(16), GeneratorHyper(epochs=1, batch_size=8), None, seed=1)
    net = tiny((GENDER, RACE))
    fresh = load_matching(net, public.state_dict(), public.config)
    assert fresh == ["race"]
    for part in net.autoencoder:
        part.requires_grad_(False)
    images, gender = faces(32)
    labels = torch.cat([gender, torch.randint(0, 3, (32, 1))], dim=1)
    result = train(net, images, labels, GeneratorHyper(epochs=2, batch_size=8, physical_batch_size=4,
                                                       noise_multiplicity=2),
                   DPSettings(target_delta=1e-3, target_epsilon=4.0), seed=0)
    assert 3.0 < result.epsilon <= 4.0
    for name, value in public.state_dict().items():
        if name.startswith(("encoder.", "decoder.")):
            torch.testing.assert_close(net.state_dict()[name], value)
    assert not torch.equal(net.state_dict()["denoiser.inp.weight"], public.state_dict()["denoiser.inp.weight"])


def test_regeneration_renders_at_the_generators_size_and_heavy_noise_forgets_the_face():
    net = tiny()
    images, labels = faces(4)
    config = net.config
    out = regenerate(net, schedule_for(config, timestep=881, steps=4), images, labels,
                     torch.full_like(labels, GENDER.null), guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    # at ᾱ 4e-4 the released latent is nearly independent of the face: other faces give nearly the same output
    other = regenerate(net, schedule_for(config, timestep=881, steps=4), faces(5)[0][:4], labels,
                       torch.full_like(labels, GENDER.null), guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert (out.float() - other.float()).abs().mean() < 8


def test_a_pixel_network_and_a_latent_one_do_not_mix():
    with pytest.raises(ValueError):
        LatentGenerator(GeneratorConfig(image_size=16, attributes=(GENDER,), design="pixel"))
    pixel = build(GeneratorConfig(image_size=16, attributes=(GENDER,), design="pixel", channels=(8, 16),
                                  attention=False, norm_groups=4))
    with pytest.raises(ValueError, match="do not fit"):
        load_matching(tiny(), pixel.state_dict(), pixel.config)
    # a stored configuration from before the latent design reads as a pixel one
    text = GeneratorConfig(image_size=16, attributes=(GENDER,), design="pixel").to_json().replace(
        ', "design": "pixel"', "")
    assert '"design"' not in text and GeneratorConfig.from_json(text).design == "pixel"


def test_the_latent_norm_is_about_one_per_number():
    assert latent_clip_for(64) == 8.0 and latent_clip_for(16) == 4.0
    default = GeneratorConfig(image_size=64, attributes=(GENDER,))
    assert default.latent_clip == latent_clip_for(default.latent_dim)
    net = build(default)
    images, _ = faces(8, size=64)
    with torch.no_grad():
        z = net.encode(images)
    assert z.pow(2).mean().item() == pytest.approx(1.0)  # the unit-variance scale the DDPM schedule assumes
