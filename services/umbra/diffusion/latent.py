"""The latent generator: a face autoencoder whose latent is projected to a fixed norm, and a small conditional
denoiser that works in that latent (a latent diffusion model, as DP-LDM builds one; ALGORITHMS.md §5).

    net = LatentGenerator(GeneratorConfig(image_size=64, attributes=schema, latent_dim=64, latent_clip=8.0))
    z = net.encode(uint8_images)          # (B, latent_dim), every row of norm exactly latent_clip
    predicted = net(noisy_z, timesteps, labels)  # the denoiser's estimate of the clean latent
    images = net.decode(z)                # uint8 (B, 3, S, S)

Why a latent: noising x to ᾱ is a Gaussian mechanism whose sensitivity is the largest distance between two
inputs. In pixels that is 2·sqrt(3·S²) (110 at 32 px), so a useful image costs ε in the hundreds. Every latent
here has norm C, so two faces' latents differ by at most 2C, whatever the dimension: μ = 2C·sqrt(ᾱ/(1-ᾱ))
(umbra.privacy.mechanisms.latent_noise_mu). The latent is projected onto the sphere of radius C rather than
clipped into the ball, so that every face uses the whole norm the mechanism pays for. C is sqrt(latent_dim)
(generator.latent_clip_for): about one per number, the scale the noise schedule was made for.

The encoder and decoder are convolutional (stride-2 convolutions down to 4×4, nearest upsampling and
convolutions back), with GroupNorm (per sample, so DP-SGD's per-example gradients are exact). The denoiser is an
MLP over [z_t, diffusers' sinusoidal timestep embedding, the sum of one learned embedding per attribute]
predicting the clean latent, trained on the same DDPM schedule as the pixel generator; it samples with the same
DDIM loop and classifier-free guidance (umbra.diffusion.sampling).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from umbra.diffusion.generator_config import GeneratorConfig


SMALLEST = 4  # the encoder's last feature map is 4×4
WIDTHS = (32, 64, 128, 128, 128)  # channels after each stride-2 step, from the image down
HIDDEN = 256  # the denoiser's width
BLOCKS = 3  # the denoiser's residual blocks


def _levels(image_size: int) -> int:
    levels = int(math.log2(image_size // SMALLEST))
    if SMALLEST * 2 ** levels != image_size or not 1 <= levels <= len(WIDTHS):
        raise ValueError(f"image_size {image_size}: must be 4·2^k, at most {SMALLEST * 2 ** len(WIDTHS)}")
    return levels


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class Encoder(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        levels = _levels(config.image_size)
        layers: list[nn.Module] = []
        channels = 3
        for width in WIDTHS[:levels]:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), _norm(width, config.norm_groups), nn.SiLU()]
            channels = width
        self.convolutions = nn.Sequential(*layers)
        self.project = nn.Linear(channels * SMALLEST * SMALLEST, config.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.convolutions(x).flatten(1))


class Decoder(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        levels = _levels(config.image_size)
        widths = list(reversed(WIDTHS[:levels]))
        self.first = widths[0]
        self.expand = nn.Linear(config.latent_dim, widths[0] * SMALLEST * SMALLEST)
        layers: list[nn.Module] = []
        channels = widths[0]
        for width in widths[1:] + [widths[-1]]:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, width, 3, padding=1),
                       _norm(width, config.norm_groups), nn.SiLU()]
            channels = width
        layers += [nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh()]
        self.convolutions = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convolutions(self.expand(z).view(len(z), self.first, SMALLEST, SMALLEST))


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.condition = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(torch.nn.functional.silu(self.norm(h) + self.condition(condition)))


class Denoiser(nn.Module):
    """(z_t, t, condition embedding) -> the clean latent's estimate."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.time = Timesteps(HIDDEN, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_mlp = TimestepEmbedding(HIDDEN, HIDDEN)
        self.inp = nn.Linear(config.latent_dim, HIDDEN)
        self.blocks = nn.ModuleList(_Block(HIDDEN) for _ in range(BLOCKS))
        self.out = nn.Sequential(nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, config.latent_dim))

    def forward(self, z: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        c = self.time_mlp(self.time(timesteps).to(z.dtype)) + condition
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


class LatentGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        if config.design != "latent":
            raise ValueError(f"a {config.design} generator is not a LatentGenerator: use generator.build()")
        if not (config.latent_dim >= 1 and config.latent_clip > 0):
            raise ValueError("latent_dim and latent_clip must be positive")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.denoiser = Denoiser(config)
        self.embeddings = nn.ModuleList(nn.Embedding(a.null + 1, HIDDEN) for a in config.attributes)
        for embedding in self.embeddings:
            nn.init.normal_(embedding.weight, std=0.02)

    @property
    def autoencoder(self) -> list[nn.Module]:
        return [self.encoder, self.decoder]

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Each row scaled to norm exactly C: the bound the image mechanism's sensitivity 2C rests on."""
        return z * (self.config.latent_clip / z.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def encode_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, S, S) -> latents of norm C."""
        return self.project(self.encoder(x))

    def decode_scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]."""
        return self.decoder(z)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_scaled(images.float().div(127.5).sub(1.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_scaled(z).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = sum(embedding(labels[:, i]) for i, embedding in enumerate(self.embeddings))
        return self.denoiser(noisy, timesteps, condition)
