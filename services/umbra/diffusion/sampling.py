"""Re-generating images from a partly noised version of them (SDEdit, Meng et al. 2022) with DDIM and
classifier-free guidance.

An image is noised to timestep t (x_t = sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) z: the Gaussian mechanism whose ε
umbra.privacy.mechanisms computes) and denoised by the generator conditioned on the released attributes, in
`steps` DDIM steps from t down to 0. Guidance w pushes each step away from the prediction without the protected
attributes (`unconditional` labels: those set to null, the kept ones still given): ε̂ = ε_u + w (ε_c - ε_u).
With `bare` labels (every attribute null) and a kept-attribute guidance w_k > 0, each step is also pushed toward
the kept attributes: ε̂ = ε_u + w (ε_c - ε_u) + w_k (ε_u - ε_bare). Without it a noised latent keeps its kept
attributes only as far as the noise left them; guidance is post-processing, so neither changes ε.

    plan = schedule_for(config, timestep=600, steps=10)          # plan.start: the t the image is noised to
    out = regenerate(net, plan, images, conditional, unconditional, guidance=3.0, generator=g)
    out = regenerate(net, plan, images, conditional, unconditional, guidance=3.0, generator=g,
                     bare=all_null, kept_guidance=1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from torch import nn

from umbra.diffusion.generator import noise_schedule
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.runtime.errors import InvalidInput


@dataclass(frozen=True)
class Schedule:
    start: int  # the timestep images are noised to (the first DDIM step's)
    alpha_bar: float  # ᾱ at `start`: what the image mechanism's ε is computed from
    timesteps: tuple[int, ...]  # DDIM's, from `start` down
    total: int  # the DDIM grid over the whole chain that these are taken from


def schedule_for(config: GeneratorConfig, *, timestep: int, steps: int) -> Schedule:
    """DDIM timesteps for about `steps` steps from at most `timestep` down to 0, taken from an evenly spaced
    ("trailing") grid over the whole chain, as diffusers' image-to-image pipelines do for a strength < 1."""
    if not 1 <= timestep < config.train_timesteps:
        raise InvalidInput("timestep", f"is {timestep}: must be 1 to {config.train_timesteps - 1}")
    if not 1 <= steps <= 1000:
        raise InvalidInput("settings.steps", f"is {steps}: must be 1 to 1000")
    first = min(config.train_timesteps, math.ceil(steps * config.train_timesteps / timestep))
    best: tuple[int, ...] = ()
    total = first
    # The first grid (fewest steps, at least `steps`) that starts within 2% of the chain below `timestep`: a
    # start far below it would noise less than the intensity table says (and cost more ε). ε is computed at the
    # start actually used.
    close = timestep - config.train_timesteps // 50
    for candidate in range(first, min(config.train_timesteps, 2 * first) + 1):
        below = tuple(int(t) for t in _ddim(config, candidate).timesteps if int(t) <= timestep)
        if below and (not best or below[0] > best[0]):
            best, total = below, candidate
        if best and best[0] >= close:
            break
    alpha_bar = float(noise_schedule(config).alphas_cumprod[best[0]])
    return Schedule(best[0], alpha_bar, best, total)


def _ddim(config: GeneratorConfig, total: int) -> DDIMScheduler:
    scheduler = DDIMScheduler.from_config(noise_schedule(config).config, timestep_spacing="trailing",
                                          clip_sample=True, set_alpha_to_one=True)
    scheduler.set_timesteps(total)
    return scheduler


@torch.inference_mode()
def regenerate(net: nn.Module, schedule: Schedule, images: torch.Tensor, conditional: torch.Tensor,
               unconditional: torch.Tensor, *, guidance: float, generator: torch.Generator,
               bare: torch.Tensor | None = None, kept_guidance: float = 0.0) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> uint8 images, noised to schedule.start and denoised under the labels. A latent
    generator noises and denoises the images' latents (norm C), and decodes the result projected back to norm C
    (post-processing: the decoder was trained on latents of that norm)."""
    net.eval()
    scheduler = _ddim(net.config, schedule.total)
    latent = net.config.design == "latent"
    x0 = net.encode(images) if latent else images.float().div(127.5).sub(1.0)
    noise = torch.randn(x0.shape, generator=generator)
    sample = scheduler.add_noise(x0, noise, torch.full((len(x0),), schedule.start))
    labels = [conditional, unconditional] + ([bare] if bare is not None and kept_guidance else [])
    every = torch.cat(labels)
    for t in schedule.timesteps:
        timesteps = torch.full((len(every),), t)
        predicted_c, predicted_u, *predicted_bare = net(torch.cat([sample] * len(labels)), timesteps,
                                                        every).chunk(len(labels))
        predicted = predicted_u + guidance * (predicted_c - predicted_u)
        if predicted_bare:
            predicted = predicted + kept_guidance * (predicted_u - predicted_bare[0])
        sample = scheduler.step(predicted, t, sample, generator=generator).prev_sample
    if latent:
        return net.decode(net.project(sample))
    return sample.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
