"""What makes the face autoencoder sharp: a perceptual loss on scattering features and a patch discriminator.

A reconstruction loss alone (L1 or MSE) is minimised by the average of the faces a latent could be, which is a
blur. Two losses fix that, as VQGAN and the Stable Diffusion autoencoder do (with a VGG feature loss there; here
scattering, a fixed transform that needs no downloaded weights):

- `ScatteringLoss`: the L1 distance between the scattering coefficients (kymatio, J=2, L=8) of the face and of
  its reconstruction, at 32 px, each coefficient map scaled by its mean size on the real faces of the batch so
  that fine texture (second order, small) weighs as much as the coarse shape (zeroth order, large);
- `PatchDiscriminator`: a small convolutional critic that scores each ~30 px patch real or reconstructed
  (pix2pix's PatchGAN, hinge loss, spectral normalisation for a stable game); the autoencoder is pushed to make
  patches it cannot tell from real ones.

    perceptual = ScatteringLoss()
    critic = PatchDiscriminator()
    loss = l1 + perceptual(reconstructed, real) + weight * generator_hinge(critic(reconstructed))

Images in [-1, 1], (B, 3, 64, 64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

SCATTERING_SIZE = 32


class ScatteringLoss(nn.Module):
    def __init__(self, image_size: int = 64):
        super().__init__()
        from kymatio.torch import Scattering2D

        self.factor = image_size // SCATTERING_SIZE
        self.scattering = Scattering2D(J=2, shape=(SCATTERING_SIZE, SCATTERING_SIZE), L=8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.add(1).div(2)
        if self.factor > 1:
            x = F.avg_pool2d(x, self.factor)
        return self.scattering(x.contiguous())  # (B, 3, 81, 8, 8)

    def forward(self, reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(real)
            scale = target.abs().mean(dim=(0, 3, 4), keepdim=True).clamp_min(1e-4)
        return ((self.features(reconstructed) - target).abs() / scale).mean()


class PatchDiscriminator(nn.Module):
    """64 px -> an 8×8 map of patch scores (each sees about 34 px)."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width * 2, width * 4):
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def discriminator_hinge(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def generator_hinge(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()
