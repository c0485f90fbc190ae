"""A trained classifier as the unlearning updates see it: the trainable part (for the ScatterNets, what follows
the fixed scattering stem) and its inputs for each view of an image (the image and its mirror image).

    objective, points = trainable(model)
    update = updates.unlearn(objective, originals=points(changed), ...)   # updates `model` in place
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from umbra.classifiers.data import LabelledImages
from umbra.classifiers.loop import stem_outputs
from umbra.feature_unlearning.updates import Objective, Points


def trainable(model: nn.Module, batch: int = 256) -> tuple[Objective, Callable[..., Points]]:
    """The objective over `model`'s trained parameters (they share storage with `model`), and the function
    turning images into its inputs: `points(data)` gives both views of every image (the exact training loss);
    `points(data, seed=s)` one view drawn at random per image (half the cost; an unbiased estimate of it)."""
    stem = getattr(model, "fixed_stem", None)
    net = model.trainable() if stem is not None else model

    def inputs(images: torch.Tensor, mirrored: bool) -> torch.Tensor:
        if stem is None:
            x = images.float().div_(255.0)
            return x.flip(-1) if mirrored else x
        if not len(images):  # no samples: empty stem outputs of the right shape
            with torch.no_grad():
                return stem(torch.zeros((1, *images.shape[1:])))[:0]
        return stem_outputs(stem, images, mirrored=mirrored, batch=batch)

    def points(data: LabelledImages, seed: int | None = None) -> Points:
        if seed is None:
            return Points((inputs(data.images, False), inputs(data.images, True)), data.labels)
        flip = torch.rand(len(data), generator=torch.Generator().manual_seed(seed)) < 0.5
        images = data.images.clone()
        images[flip] = images[flip].flip(-1)
        return Points((inputs(images, False),), data.labels)

    return Objective(net), points
