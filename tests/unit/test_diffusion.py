"""The conditional generator's pieces: the attribute schema, noise multiplicity (each example's K rows averaged
before Opacus clips), resuming a training run, and SDEdit regeneration with DDIM."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import GradSampleModule

from umbra.diffusion.generator_config import GeneratorConfig
from umbra.privacy.dp_sgd import Checkpoint
from umbra.diffusion.attributes import Attribute, schema_for
from umbra.diffusion.generator import ConditionalUNet, load_matching, noise_schedule
from umbra.diffusion.sampling import regenerate, schedule_for
from umbra.diffusion.training import GeneratorHyper, _average_multiplicity, train
from umbra.runtime.errors import InvalidInput

GENDER = Attribute("gender", ("0", "1"))


def tiny(attributes=(GENDER,), prediction: str = "sample") -> ConditionalUNet:
    torch.manual_seed(0)
    return ConditionalUNet(GeneratorConfig(image_size=16, attributes=tuple(attributes), channels=(8, 16),
                                           attention=False, norm_groups=4, prediction=prediction, design="pixel"))


def test_schema_tells_numeric_from_categorical_and_buckets_ages():
    ages = [str(a) for a in range(1, 40)]
    gender, age = schema_for({"gender": ["1", "0", "1"], "age": ages}, ["gender", "age"])
    assert gender == GENDER and gender.null == 2
    assert age.numeric and age.values[0] == "0-10" and age.values[-1] == "70-100"
    assert [age.index(v) for v in ("0", "9.5", "10", "29", "70", "130", "-4")] == [0, 0, 1, 2, 7, 7, 0]
    with pytest.raises(InvalidInput, match="not one of"):
        gender.index("2")
    with pytest.raises(InvalidInput) as error:
        schema_for({"gender": ["0", "1"]}, ["race"])
    assert error.value.field == "condition_attributes"
    with pytest.raises(InvalidInput, match="only the value"):
        schema_for({"gender": ["1", "1"]}, ["gender"])


def test_noise_multiplicity_averages_each_examples_rows_before_clipping():
    net, k, b = tiny(), 3, 4
    reference = copy.deepcopy(net)
    torch.manual_seed(1)
    noisy, noise = torch.randn(b * k, 3, 16, 16), torch.randn(b * k, 3, 16, 16)
    timesteps, labels = torch.randint(0, 1000, (b * k,)), torch.randint(0, 3, (b * k, 1))
    wrapped = GradSampleModule(net, loss_reduction="mean")
    (wrapped(noisy, timesteps, labels) - noise).pow(2).mean().backward()
    _average_multiplicity(net, b, k)
    weight = dict(net.named_parameters())["unet.conv_in.weight"]
    assert weight.grad_sample.shape[0] == b  # one gradient per example, not per row
    for i in range(b):  # by hand: the gradient of example i's mean loss over its own K rows
        rows = slice(i * k, (i + 1) * k)
        reference.zero_grad()
        (reference(noisy[rows], timesteps[rows], labels[rows]) - noise[rows]).pow(2).mean().backward()
        expected = dict(reference.named_parameters())["unet.conv_in.weight"].grad
        torch.testing.assert_close(weight.grad_sample[i], expected, rtol=1e-4, atol=1e-6)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does():
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 2, (24, 1))
    hyper = GeneratorHyper(epochs=2, batch_size=8, noise_multiplicity=2)
    whole = tiny()
    train(whole, images, labels, hyper, None, seed=3)
    saved: list[Checkpoint] = []
    first = tiny()
    train(first, images, labels, GeneratorHyper(epochs=2, batch_size=8, noise_multiplicity=2), None, seed=3,
          on_epoch=lambda report, checkpoint: saved.append(checkpoint), should_stop=lambda: len(saved) == 1)
    resumed = tiny()
    train(resumed, images, labels, hyper, None, seed=3, resume=saved[0])
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_dp_training_spends_at_most_the_target():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 2, (32, 1))
    from umbra.privacy.dp_sgd import DPSettings

    result = train(tiny(), images, labels, GeneratorHyper(epochs=2, batch_size=8, physical_batch_size=4,
                                                          noise_multiplicity=2),
                   DPSettings(target_delta=1e-3, target_epsilon=4.0), seed=0)
    assert 3.0 < result.epsilon <= 4.0 and result.noise_multiplier > 0 and result.steps > 0


def test_schedule_starts_at_or_below_the_timestep_and_reports_its_alpha_bar():
    config = tiny().config
    schedule = schedule_for(config, timestep=600, steps=10)
    assert 580 <= schedule.start <= 600 and len(schedule.timesteps) >= 10
    assert list(schedule.timesteps) == sorted(schedule.timesteps, reverse=True)
    assert schedule.alpha_bar == pytest.approx(float(noise_schedule(config).alphas_cumprod[schedule.start]))
    with pytest.raises(InvalidInput):
        schedule_for(config, timestep=1000, steps=10)


def test_regenerating_from_a_barely_noised_image_keeps_it():
    net = tiny(prediction="epsilon")  # untrained: its small noise estimate barely moves the image
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    labels = torch.tensor([[0], [1]])
    out = regenerate(net, schedule_for(net.config, timestep=2, steps=1), images, labels,
                     torch.full_like(labels, GENDER.null), guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert (out.float() - images.float()).abs().mean() < 6  # of 255
    far = regenerate(net, schedule_for(net.config, timestep=900, steps=3), images, labels,
                     torch.full_like(labels, GENDER.null), guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert (far.float() - images.float()).abs().mean() > 20


def test_kept_guidance_pushes_only_where_kept_attributes_are_given():
    race = Attribute("race", ("0", "1", "2"))
    net = tiny((GENDER, race), prediction="epsilon")
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    conditional = torch.tensor([[0, 1], [1, 2]])
    unconditional = torch.tensor([[GENDER.null, 1], [GENDER.null, 2]])  # gender protected, race kept
    bare = torch.tensor([[GENDER.null, race.null]] * 2)

    def run(**kept):
        return regenerate(net, schedule_for(net.config, timestep=600, steps=3), images, conditional, unconditional,
                          guidance=2.0, generator=torch.Generator().manual_seed(0), **kept).float()

    plain = run()
    assert (run(bare=bare, kept_guidance=0.0) - plain).abs().max() <= 1
    assert (run(bare=unconditional, kept_guidance=4.0) - plain).abs().max() <= 1  # nothing kept: no push
    pushed = run(bare=bare, kept_guidance=4.0)
    assert (pushed - plain).abs().mean() > 1


def test_pretrained_weights_load_and_new_attributes_start_fresh():
    pretrained = tiny()
    race = Attribute("race", ("0", "1", "2"))
    net = tiny((GENDER, race))
    fresh = load_matching(net, pretrained.state_dict(), pretrained.config)
    assert fresh == ["race"]
    torch.testing.assert_close(net.embeddings[0].weight, pretrained.embeddings[0].weight)
    torch.testing.assert_close(net.unet.conv_in.weight, pretrained.unet.conv_in.weight)
