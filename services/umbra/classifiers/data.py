"""A labelled split of a dataset version as tensors in memory (uint8, so 3,000 faces at 64 px take 37 MB),
read by streaming the version's shards once."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from umbra.runtime.errors import DataLoss, InvalidInput
from umbra.storage.datasets import DatasetReader


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # uint8, (N, 3, H, W)
    labels: torch.Tensor  # int64, (N,)
    classes: list[str]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, keep: list[bool]) -> "LabelledImages":
        """The samples where `keep` is true, in order."""
        index = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.int64)
        return LabelledImages(self.images[index], self.labels[index], list(self.classes),
                              [self.keys[i] for i in index])

    def floats(self, index: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Images as float32 in [0, 1] (what every model takes)."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)


MAX_SIDE = 1024  # the largest image a dataset version may hold (umbra.dataset.manifest.MAX_IMAGE_SIZE)


def decode(data: bytes, size: int) -> np.ndarray:
    """An encoded image as uint8 RGB, (3, size, size), resized (bilinear) when its side differs. DataLoss, before
    any pixel is decoded, for an image larger than any version holds (a decompression bomb the commit's check
    would have refused), and for bytes that do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) > MAX_SIDE:
                raise DataLoss(f"a stored image is {image.size[0]}x{image.size[1]} pixels; versions hold at most "
                               f"{MAX_SIDE}x{MAX_SIDE}")
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataLoss(f"a stored image does not decode: {exc}") from None


def load_keys(reader: DatasetReader, labels: dict[str, str], *, image_size: int, classes: list[str]) -> LabelledImages:
    """The samples whose keys `labels` names, labelled as it says (class names, in `classes`), in the reader's
    order. Fails when the version lacks one of the keys."""
    images, found = [], []
    for sample, data in (reader.iter_images() if labels else ()):
        if sample.key in labels:
            images.append(decode(data, image_size))
            found.append(sample.key)
    if len(found) != len(labels):
        missing = sorted(set(labels) - set(found))
        raise InvalidInput("keys", f"{len(missing)} keys are not in {reader.dataset} version {reader.version} "
                                   f"(e.g. {missing[0]!r})")
    index = {c: i for i, c in enumerate(classes)}
    return LabelledImages(
        images=torch.from_numpy(np.stack(images)) if images else torch.zeros((0, 3, image_size, image_size),
                                                                              dtype=torch.uint8),
        labels=torch.tensor([index[labels[k]] for k in found], dtype=torch.int64),
        classes=list(classes), keys=found)


def concatenate(parts: list[LabelledImages]) -> LabelledImages:
    """One set of the parts' samples, in order (the parts share their classes)."""
    return LabelledImages(images=torch.cat([p.images for p in parts]), labels=torch.cat([p.labels for p in parts]),
                          classes=list(parts[0].classes), keys=[k for p in parts for k in p.keys])


def load_split(reader: DatasetReader, *, task: str, split: str, image_size: int,
               classes: list[str] | None = None) -> LabelledImages:
    """The samples of one split labelled by the `task` column. `classes` fixes the label order (use the training
    split's for evaluation); when None, it is the sorted set of values found. Fails before any compute on an
    unknown column, an empty split, or a single class."""
    if task not in reader.header.label_columns:
        raise InvalidInput("task", f"{task!r} is not a label column of this dataset "
                                   f"(it has {', '.join(reader.header.label_columns) or 'none'})")
    images, labels, keys = [], [], []
    for sample, data in reader.iter_images(split=split):
        if task in sample.labels:
            images.append(decode(data, image_size))
            labels.append(sample.labels[task])
            keys.append(sample.key)
    if not images:
        raise InvalidInput("dataset.split", f"split {split!r} has no samples labelled with {task!r}")
    if classes is None:
        classes = sorted(set(labels), key=lambda v: (len(v), v))  # "2" before "10"
        if len(classes) < 2:
            raise InvalidInput("task", f"{task!r} has a single value ({classes[0]!r}) in split {split!r}")
    index = {c: i for i, c in enumerate(classes)}
    known = [i for i, label in enumerate(labels) if label in index]
    return LabelledImages(
        images=torch.from_numpy(np.stack([images[i] for i in known])),
        labels=torch.tensor([index[labels[i]] for i in known], dtype=torch.int64),
        classes=list(classes),
        keys=[keys[i] for i in known],
    )
