"""Training the conditional generator on the denoising loss, plainly or with DP-SGD through Opacus.

DP follows DPDM (Dockhorn et al. 2023): Poisson sampling, and *noise multiplicity*: each example is noised K
times (K timesteps and noise draws) and its K losses' gradients are averaged BEFORE its per-example clipping,
so K lowers the variance of the example's gradient at no privacy cost (the example is still one clipped
contribution). Opacus computes per-row gradients of the K·B rows (hooks); they are averaged back to B
per-example gradients before its optimizer clips them, adds the noise and its accountant counts the step.

Classifier-free guidance is trained by replacing each attribute, independently per row, with its `null`
index at the rate `condition_dropout`. The weights kept are an exponential moving average of the iterates
(diffusers' EMAModel, with warm-up; DPDM keeps one at 0.999): post-processing of DP-SGD's outputs, so it costs no
privacy.

    result = train(net, images, labels, GeneratorHyper(epochs=2), dp=DPSettings(target_epsilon=10,
                   target_delta=1e-5), seed=0, on_epoch=save)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from umbra.diffusion.generator import noise_schedule
from umbra.privacy.dp_sgd import Checkpoint, DPSettings, EpochReport, TrainResult, make_private
from umbra.runtime.errors import InvalidInput

log = logging.getLogger(__name__)


# The ranges of a TrainGeneratorRequest's numbers (0 in the request is the default below, see
# umbra.services.anonymizer.convert). A diffusion model wants many more epochs than a classifier.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096
MAX_LEARNING_RATE = 1.0
MAX_NOISE_MULTIPLICITY = 64


@dataclass(frozen=True)
class GeneratorHyper:
    epochs: int = 10
    batch_size: int = 64  # logical (expected, under Poisson sampling)
    physical_batch_size: int = 16  # examples per forward pass (each K rows)
    learning_rate: float = 1e-3
    noise_multiplicity: int = 1  # K
    condition_dropout: float = 0.1
    flip: bool = True
    ema_decay: float = 0.999  # 0: keep the last iterate

    def validate(self, data_size: int) -> "GeneratorHyper":
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise InvalidInput("epochs", f"is {self.epochs}: must be 1 to {MAX_EPOCHS}")
        if not 1 <= self.batch_size <= min(data_size, MAX_BATCH_SIZE):
            raise InvalidInput("batch_size", f"is {self.batch_size}: must be 1 to the {data_size} training images, "
                                             f"at most {MAX_BATCH_SIZE}")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= MAX_LEARNING_RATE):
            raise InvalidInput("learning_rate", f"is {self.learning_rate}: must be above 0 and at most "
                                                f"{MAX_LEARNING_RATE:g}")
        if not 1 <= self.noise_multiplicity <= MAX_NOISE_MULTIPLICITY:
            raise InvalidInput("privacy.noise_multiplicity", f"is {self.noise_multiplicity}: must be 1 to "
                                                             f"{MAX_NOISE_MULTIPLICITY}")
        if not 0 <= self.condition_dropout < 1:
            raise InvalidInput("condition_dropout", "must be in [0, 1)")
        return self


def train(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, hyper: GeneratorHyper,
          dp: DPSettings | None, seed: int, *, on_epoch: Callable[[EpochReport, Checkpoint], None] | None = None,
          resume: Checkpoint | None = None, should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Trains `net` in place on uint8 `images` (N, 3, H, W) with conditioning `labels` (N, attributes)."""
    hyper.validate(len(images))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if resume is not None:
        net.load_state_dict(resume.model)
        if resume.rng is not None:
            generator.set_state(resume.rng)
    schedule = noise_schedule(net.config)
    # A frozen (public) autoencoder is a fixed function: each face is encoded once, both ways round, rather than at
    # every step. The DP unit is still the face: its row holds its two latents.
    data = _frozen_latents(net, images, hyper.flip) if _autoencoder_frozen(net) else images
    loader = DataLoader(TensorDataset(data, labels), batch_size=hyper.batch_size, shuffle=True,
                        generator=generator)
    # a latent generator started from a public one trains its denoiser only (generator_training freezes the rest)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=hyper.learning_rate)
    private = make_private(module=net, optimizer=optimizer, data_loader=loader, dp=dp, epochs=hyper.epochs,
                           resume=resume, grad_sample_mode="hooks")
    model, optimizer = private.module, private.optimizer
    ema = None
    if hyper.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(net.parameters(), decay=hyper.ema_decay, use_ema_warmup=True)
        if resume is not None and resume.ema:
            ema.load_state_dict(resume.ema)
    k = hyper.noise_multiplicity
    steps, loss_value = private.start_steps, math.nan
    model.train()
    for epoch in range(private.start_epoch, hyper.epochs):
        total, count = 0.0, 0
        for x, y in private.batches(hyper.physical_batch_size):
            if should_stop():
                return private.result(steps, loss_value)
            optimizer.zero_grad(set_to_none=True)
            if len(x):
                loss = _denoising_loss(model, schedule, x, y, k, hyper, generator, net)
                loss.backward()
                total += loss.item() * len(x)
                count += len(x)
            if dp is not None:
                _average_multiplicity(net, len(x), k)
            optimizer.step()
            if private.stepped():
                steps += 1
                if ema is not None:
                    ema.step(net.parameters())
        loss_value = total / max(count, 1)
        report = private.report(epoch + 1, hyper.epochs, loss_value, steps)
        log.info("generator epoch %d/%d: loss %.4f, epsilon %.3f", epoch + 1, hyper.epochs, loss_value,
                 report.epsilon)
        if on_epoch is not None:
            on_epoch(report, private.checkpoint(epoch + 1, steps, net, generator, ema))
    if ema is not None:
        ema.copy_to(net.parameters())  # the averaged weights are the generator's
    return private.result(steps, loss_value)


def _autoencoder_frozen(net: nn.Module) -> bool:
    return net.config.design == "latent" and not net.encoder.project.weight.requires_grad


@torch.no_grad()
def _frozen_latents(net: nn.Module, images: torch.Tensor, flip: bool, chunk: int = 256) -> torch.Tensor:
    """(N, 2, latent_dim): each face's latent as it is and mirrored ((N, 1, latent_dim) without flips)."""
    was_training = net.training
    net.eval()
    ways = [False, True] if flip else [False]
    out = torch.stack([torch.cat([net.encode(part.flip(-1) if mirrored else part) for part in images.split(chunk)])
                       for mirrored in ways], dim=1)
    net.train(was_training)
    return out


def _denoising_loss(model, schedule, x: torch.Tensor, y: torch.Tensor, k: int, hyper: GeneratorHyper,
                    generator: torch.Generator, net: nn.Module) -> torch.Tensor:
    """Mean over the K·B rows (example-major) of each row's loss: its MSE against the noise (or the clean image);
    for a latent generator, the denoiser's squared error on the latent (over C², so about 1 for a useless guess)
    plus, while the autoencoder trains, its reconstruction's MSE. `x`: uint8 images, or a frozen autoencoder's
    latents (_frozen_latents)."""
    flip = torch.rand(len(x), generator=generator) < 0.5 if hyper.flip else torch.zeros(len(x), dtype=torch.bool)
    labels = y.repeat_interleave(k, dim=0).clone()
    nulls = torch.tensor([a.null for a in net.config.attributes])
    drop = torch.rand(labels.shape, generator=generator) < hyper.condition_dropout
    labels = torch.where(drop, nulls.expand_as(labels), labels)
    reconstruction = torch.zeros(())
    if x.dtype != torch.uint8:  # cached latents: each row's, mirrored or not
        x0 = x[torch.arange(len(x)), flip.long() if x.shape[1] > 1 else 0].repeat_interleave(k, dim=0)
    else:
        x0 = x.float().div(127.5).sub(1.0)  # diffusers' [-1, 1]
        x0[flip] = x0[flip].flip(-1)
        x0 = x0.repeat_interleave(k, dim=0)
        if net.config.design == "latent":
            z = net.encode_scaled(x0)
            reconstruction = (net.decode_scaled(z) - x0).pow(2).flatten(1).mean(1).mean()
            x0 = z.detach()  # the denoiser learns the latents; its loss does not move the encoder
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.randint(0, net.config.train_timesteps, (len(x0),), generator=generator)
    noisy = schedule.add_noise(x0, noise, timesteps)
    predicted = model(noisy, timesteps, labels)
    target = x0 if net.config.prediction == "sample" else noise
    if net.config.design == "latent":
        return reconstruction + (predicted - target).pow(2).sum(1).mean() / net.config.latent_clip ** 2
    return (predicted - target).pow(2).mean()


def _average_multiplicity(net: nn.Module, examples: int, k: int) -> None:
    """Opacus's per-row gradients (K·B rows) -> per-example gradients (B), the mean of each example's K rows.
    With the "mean" loss reduction each row's gradient is that row's own loss gradient, so the mean is the
    gradient of the example's K-draw loss; clipping then bounds each example's contribution, not each row's."""
    for p in net.parameters():
        if not p.requires_grad:
            continue
        sample = getattr(p, "grad_sample", None)
        if examples == 0:  # an empty Poisson batch: no contribution, the step still adds noise
            p.grad_sample = torch.zeros((0, *p.shape))
        elif sample is not None and k > 1:
            p.grad_sample = sample.view(examples, k, *sample.shape[1:]).mean(dim=1)
