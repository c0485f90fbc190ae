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
from umbra.feature_unlearning.updates import Objective, Points


def trainable(model: nn.Module, batch: int = 256) -> tuple[Objective, Callable[..., Points]]:
    """The objective over `model`'s trained parameters (they share storage with `model`), and the function
    turning images into its inputs: `points(data)` gives both views of every image (the exact training loss);
    `points(data, seed=s)` one view drawn at random per image (half the cost; an unbiased estimate of it)."""
    stem = getattr(model, "fixed_stem", None)
    net = model.trainable() if stem is not None else model

    def points(data: LabelledImages, seed: int | None = None) -> Points:
        if not len(data):  # no samples: empty inputs of the right shape
            one = torch.zeros((1, *data.images.shape[1:]))
            with torch.no_grad():
                empty = (stem(one) if stem is not None else one)[:0]
            return Points((empty,) if seed is not None else (empty, empty), data.labels)
        if seed is not None:
            flip = torch.rand(len(data), generator=torch.Generator().manual_seed(seed)) < 0.5
            x = data.floats()
            x[flip] = x[flip].flip(-1)
            with torch.no_grad():
                view = torch.cat([stem(x[s:s + batch]) for s in range(0, len(x), batch)]) if stem is not None else x
            return Points((view,), data.labels)
        views = ([], [])
        with torch.no_grad():
            for start in range(0, len(data), batch):
                x = data.floats(slice(start, start + batch))
                for out, image in zip(views, (x, x.flip(-1)), strict=True):
                    out.append(stem(image) if stem is not None else image)
        return Points(tuple(torch.cat(v) for v in views), data.labels)

    return Objective(net), points
