"""The core of MDP: make a start image of another class carry the penultimate features of an original image.

    starts = choose_starts(labels, generator)                  # never the sample's own class
    released, loss = match_features(extractor, originals, originals[starts], steps=100, step_size=0.1)

Each released image keeps its ORIGINAL label but looks like its start image; a model trained on the released
set still learns the original mapping, because the features it sees are the originals'. As in the reference
code: the extractor in eval mode, MSE between penultimate features (`extractor.features`), per-sample
L2-normalized gradient steps, pixels clipped to [0, 1], the same input normalization as in training (our
models normalize inside `features`, so generation and training cannot differ). Unlike it: start images are
never of the sample's class, and every random choice comes from a seeded generator.

Features are those of the image as given: an extractor configured with mirror averaging (the test-time
averaging of an image's and its mirror's features) matches single views here, as the paper's extractor has no
such averaging; it also halves the work.

Faster, at equal feature loss: with `momentum` > 0 the normalized steps accumulate (heavy-ball momentum on the
per-sample unit directions; 0 is the paper's update exactly). On a race ScatterNet extractor and 64 faces, the
paper's 100 steps of 0.1 ended at a mean feature loss of 0.0117, their images at SSIM 0.951 to their start
images; 30 steps of 0.06 with momentum 0.7 ended at 0.0098 and 0.943, 30 of 0.05 with momentum 0.8 at 0.0086 and
0.923 (0.9 with steps of 0.1 gets lower still, 0.0074, but moves far from the start image: 0.742). The time per
step is what it was: nearly all of it is the scattering transform's forward and backward pass, and
neither freezing the extractor's parameters (done here: no gradient is computed for them) nor running batches in
parallel threads measurably shortened it on 2 cores. `reference_match` is the reference's plain loop (gradients
for the parameters too, no momentum), kept for the benchmark's `speed_vs_reference`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from umbra.runtime.errors import Cancelled, InvalidInput


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


def feature_loss(extractor: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE between features; the reference's mean over the batch has the same per-sample direction."""
    return F.mse_loss(extractor.features(images), targets, reduction="none").flatten(1).mean(1)


@contextmanager
def single_view(extractor: nn.Module, *, freeze: bool) -> Iterator[nn.Module]:
    """The extractor as feature matching uses it: eval mode, no mirror averaging, and with `freeze` no
    gradients for its parameters; everything is put back afterwards."""
    was_training, mirror = extractor.training, getattr(extractor, "mirror_average", False)
    frozen = [p for p in extractor.parameters() if p.requires_grad] if freeze else []
    extractor.eval()
    if hasattr(extractor, "mirror_average"):
        extractor.mirror_average = False
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield extractor
    finally:
        for p in frozen:
            p.requires_grad_(True)
        if hasattr(extractor, "mirror_average"):
            extractor.mirror_average = mirror
        extractor.train(was_training)


def _check(steps: int, step_size: float, batch_size: int, momentum: float = 0.0) -> None:
    if steps < 1:
        raise InvalidInput("steps", "must be positive")
    if not 0 < step_size < float("inf"):
        raise InvalidInput("step_size", "must be a positive number")
    if batch_size < 1:
        raise InvalidInput("batch_size", "must be positive")
    if not 0 <= momentum < 1:
        raise InvalidInput("momentum", "must be at least 0 and below 1")


def _match_batch(extractor: nn.Module, originals: torch.Tensor, starts: torch.Tensor, steps: int,
                 step_size: float, momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch, the extractor already in `single_view(freeze=True)`."""
    with torch.no_grad():
        targets = extractor.features(originals)
    images, velocity = starts.detach().clone(), torch.zeros_like(starts)
    for _ in range(steps):
        images.requires_grad_(True)
        (gradient,) = torch.autograd.grad(feature_loss(extractor, images, targets).sum(), images)
        velocity.mul_(momentum).add_(gradient / (gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8))
        images = (images.detach() - step_size * velocity).clamp_(0.0, 1.0)
    with torch.no_grad():
        return images, feature_loss(extractor, images, targets)


def match_features(extractor: nn.Module, originals: torch.Tensor, starts: torch.Tensor, *, steps: int = 100,
                   step_size: float = 0.1, momentum: float = 0.0, batch_size: int = 128,
                   on_batch: Callable[[int, torch.Tensor], None] | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> tuple[torch.Tensor, torch.Tensor]:
    """(released images, final per-sample feature loss) for float images in [0, 1], shape (N, 3, H, W), batch
    by batch. `on_batch(images_done, batch_losses)` follows progress; `cancelled()` is asked before each batch
    and raises Cancelled when true."""
    _check(steps, step_size, batch_size, momentum)
    released, losses = torch.empty_like(originals), torch.empty(len(originals))
    with single_view(extractor, freeze=True):
        for start in range(0, len(originals), batch_size):
            if cancelled():
                raise Cancelled("cancelled by request")
            where = slice(start, start + batch_size)
            released[where], losses[where] = _match_batch(extractor, originals[where], starts[where], steps,
                                                          step_size, momentum)
            if on_batch:
                on_batch(min(start + batch_size, len(originals)), losses[where])
    return released, losses


def reference_match(extractor: nn.Module, originals: torch.Tensor, starts: torch.Tensor, *, steps: int = 100,
                    step_size: float = 0.1, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's loop, for comparison: one batch after another, `loss.backward()` on the batch-mean
    MSE, which also computes gradients for every parameter of the extractor."""
    _check(steps, step_size, batch_size)
    released, losses = torch.empty_like(originals), torch.empty(len(originals))
    with single_view(extractor, freeze=False):
        for start in range(0, len(originals), batch_size):
            where = slice(start, start + batch_size)
            targets = extractor.features(originals[where]).detach()
            images = starts[where].detach().clone()
            for _ in range(steps):
                images.requires_grad_(True)
                extractor.zero_grad()
                loss = F.mse_loss(extractor.features(images), targets)
                loss.backward()
                images = _step(images.detach(), images.grad, step_size)
            with torch.no_grad():
                released[where], losses[where] = images, feature_loss(extractor, images, targets)
        extractor.zero_grad()
    return released, losses
