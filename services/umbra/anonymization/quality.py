"""How real released faces look, as one number: the Fréchet distance of scattering features, as FID measures
realism with a network's features, but with a fixed transform that needs no downloaded weights.

    quality = realism(released_test, original_test, original_train)   # 1: as real as held-out real faces

Features: each colour channel's 81 scattering coefficients (kymatio, J=2, L=8) at 32 px, averaged over space
(243 numbers per image). `realism` is FD(original test, original train) / FD(released test, original train): 1
when released faces are as close to the training faces' distribution as new real faces are, near 0 for blur.
The benchmarks and the public pretraining's card (umbra.anonymization.pretrain) both measure with it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32  # every image is reduced to this side (area averaging) before its features are taken
_SCATTERING = None


def at(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images at `size` px (area averaging when reduced)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="area").round().clamp(0, 255).to(torch.uint8)


def scattering_features(images: torch.Tensor) -> np.ndarray:
    """(N, 243) for uint8 images (N, 3, H, W)."""
    global _SCATTERING
    from kymatio.torch import Scattering2D

    if _SCATTERING is None:
        _SCATTERING = Scattering2D(J=2, shape=(SIZE, SIZE), L=8)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = at(images[start:start + 256], SIZE).float().div(255.0).contiguous()
            out.append(_SCATTERING(x).mean(dim=(-1, -2)).flatten(1).numpy())
    return np.concatenate(out).astype(np.float64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (as FID computes it)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root)))


def realism(released: torch.Tensor, held_out: torch.Tensor, reference: torch.Tensor) -> float:
    """FD(held-out originals, reference) / FD(released, reference); uint8 images, rounded to 4 places."""
    features = scattering_features(reference)
    return round(frechet(scattering_features(held_out), features) / frechet(scattering_features(released), features),
                 4)
