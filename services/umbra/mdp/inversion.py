"""The inversion attack on MDP: an attacker holding a released image and the feature extractor tries to recover
the original, which MDP's released image encodes only through the extractor's features.

    recovered = invert_features(extractor, released, start="gray")     # or start="released"

Feature inversion in the manner of Mahendran & Vedaldi (2015): find pixels whose features match the released
image's, with a total-variation prior that favours natural images, by Adam on the pixels, clipped to [0, 1].
From "gray" the attacker starts with no image at all; from "released" it starts at the released image and lets
the prior smooth it. The benchmark reports the closer of the two (an upper bound on what these attackers get).
"""

from __future__ import annotations

import torch
from torch import nn

from umbra.mdp.feature_matching import feature_loss, single_view


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference between neighbouring pixels."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def invert_features(extractor: nn.Module, released: torch.Tensor, *, start: str = "gray", steps: int = 200,
                    learning_rate: float = 0.02, tv_weight: float = 0.05, batch_size: int = 64) -> torch.Tensor:
    """The attacker's reconstructions of the originals behind `released` (float, [0, 1], (N, 3, H, W))."""
    if start not in ("gray", "released"):
        raise ValueError("start: 'gray' or 'released'")
    out = torch.empty_like(released)
    with single_view(extractor, freeze=True):
        for first in range(0, len(released), batch_size):
            batch = released[first:first + batch_size]
            with torch.no_grad():
                targets = extractor.features(batch)
            images = (torch.full_like(batch, 0.5) if start == "gray" else batch.clone()).requires_grad_(True)
            optimizer = torch.optim.Adam([images], lr=learning_rate)
            for _ in range(steps):
                optimizer.zero_grad()
                loss = feature_loss(extractor, images, targets) + tv_weight * total_variation(images)
                loss.sum().backward()
                optimizer.step()
                with torch.no_grad():
                    images.clamp_(0.0, 1.0)
            out[first:first + batch_size] = images.detach()
    return out
