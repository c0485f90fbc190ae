"""The core of MDP: make a start image of another class carry the penultimate features of an original image.

    starts = choose_starts(labels, generator)                  # never the sample's own class
    released, loss = match_features(extractor, originals, originals[starts], steps=100, step_size=0.1)

Each released image keeps its ORIGINAL label but looks like its start image; a model trained on the released
set still learns the original mapping, because the features it sees are the originals'. As in the reference
code: the extractor in eval mode, MSE between penultimate features (`extractor.features`), per-sample
L2-normalized gradient steps, pixels clipped to [0, 1], the same input normalization as in training (our
models normalize inside `features`, so generation and training cannot differ). Unlike it: start images are
never of the sample's class, and every random choice comes from a seeded generator.

`match_features` freezes the extractor's parameters, so each step computes the gradient for the images only
(on the small 32 px extractors this alone is not measurably faster: 51 against 51 images/s for a GroupNorm CNN,
8 against 8 for a ScatterNet, 20 steps, batch 128, 2 cores); `reference_match` is the reference's plain loop
(gradients for the parameters too), kept for the benchmark. Issue 5 (the service, the benchmark) builds on
these two functions.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from umbra.runtime.errors import InvalidInput


def choose_starts(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each sample, the index of a uniformly drawn sample of ANOTHER class (the reference draws the class
    uniformly and lets about 1 in 10 share the label's)."""
    classes = labels.unique()
    if len(classes) < 2:
        raise InvalidInput("dataset", "MDP needs at least two classes: every start image must be of another class")
    starts = torch.empty_like(labels)
    for c in classes:
        mine = (labels == c).nonzero().flatten()
        others = (labels != c).nonzero().flatten()
        starts[mine] = others[torch.randint(len(others), (len(mine),), generator=generator)]
    return starts


def _step(images: torch.Tensor, gradient: torch.Tensor, step_size: float) -> torch.Tensor:
    norms = gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return (images - step_size * gradient / (norms + 1e-8)).clamp_(0.0, 1.0)


def _loss(extractor: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE between features; the reference's mean over the batch has the same per-sample direction."""
    return F.mse_loss(extractor.features(images), targets, reduction="none").flatten(1).mean(1)


def match_features(extractor: nn.Module, originals: torch.Tensor, starts: torch.Tensor, *, steps: int = 100,
                   step_size: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(released images, final per-sample feature loss) for float images in [0, 1], shape (N, 3, H, W)."""
    if steps < 1 or not step_size > 0:
        raise InvalidInput("steps" if steps < 1 else "step_size", "must be positive")
    was_training = extractor.training
    frozen = [p for p in extractor.parameters() if p.requires_grad]
    extractor.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            targets = extractor.features(originals)
        images = starts.detach().clone()
        for _ in range(steps):
            images.requires_grad_(True)
            loss = _loss(extractor, images, targets)
            (gradient,) = torch.autograd.grad(loss.sum(), images)
            images = _step(images.detach(), gradient, step_size)
        with torch.no_grad():
            final = _loss(extractor, images, targets)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        extractor.train(was_training)
    return images.detach(), final


def reference_match(extractor: nn.Module, originals: torch.Tensor, starts: torch.Tensor, *, steps: int = 100,
                    step_size: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's loop, for comparison: `loss.backward()` on the batch-mean MSE, which also computes
    gradients for every parameter of the extractor."""
    extractor.eval()
    targets = extractor.features(originals).detach()
    images = starts.detach().clone()
    for _ in range(steps):
        images.requires_grad_(True)
        extractor.zero_grad()
        loss = F.mse_loss(extractor.features(images), targets)
        loss.backward()
        images = _step(images.detach(), images.grad, step_size)
    with torch.no_grad():
        final = _loss(extractor, images, targets)
    return images.detach(), final
