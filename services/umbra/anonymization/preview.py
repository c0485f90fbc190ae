"""Previews: a few named samples of a dataset anonymized at once, for a person to look at.

    samples = check(reader, request, ["a1", "b7"])        # InvalidInput names sample_keys
    preview = run(net, request, reader, samples, seed=2)  # Preview(keys, uint8 images N×3×S×S, released values)

Each sample's released values are drawn from its own random generator, seeded by (seed, its place in the list),
so the same call gives the same preview.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from umbra.anonymization.anonymize import Request, anonymize
from umbra.classifiers.data import decode
from umbra.dataset import manifest as mf
from umbra.runtime.errors import InvalidInput
from umbra.storage.datasets import DatasetReader

LIMIT = 16  # samples per preview; a whole dataset is AnonymizeDataset's


@dataclass(frozen=True)
class Preview:
    keys: list[str]
    images: torch.Tensor  # uint8, N×3×S×S at the generator's size
    released: list[dict[str, str]]  # per sample: each protected attribute's released value


def check(reader: DatasetReader, request: Request, keys: list[str]) -> list[mf.Sample]:
    """The samples to preview, in the order asked; every bad key refused before any work."""
    if not keys:
        raise InvalidInput("sample_keys", "name at least one sample to preview")
    if len(keys) > LIMIT:
        raise InvalidInput("sample_keys", f"has {len(keys)} keys; at most {LIMIT} per preview (use "
                                          f"AnonymizeDataset for more)")
    if len(set(keys)) != len(keys):
        raise InvalidInput("sample_keys", "names a sample twice")
    found = {s.key: s for s in reader.samples() if s.key in set(keys)}
    missing = [k for k in keys if k not in found]
    if missing:
        raise InvalidInput("sample_keys", f"{', '.join(missing[:5])} not in datasets/{reader.dataset}/versions/"
                                          f"{reader.version}")
    for key in keys:
        for attribute in (*request.protected, *request.kept):
            if attribute.name not in found[key].labels:
                raise InvalidInput("sample_keys", f"{key} has no {attribute.name} label")
            attribute.index(found[key].labels[attribute.name])
    return [found[k] for k in keys]


def run(net, request: Request, reader: DatasetReader, samples: list[mf.Sample], *, seed: int) -> Preview:
    size = reader.header.image_size
    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    pixels, order = images.numpy(), {s.key: i for i, s in enumerate(samples)}
    for sample, data in reader.iter_images():
        if sample.key in order:
            pixels[order[sample.key]] = decode(data, size)
    out, released = anonymize(net, request, images, [s.labels for s in samples],
                              [np.random.default_rng([seed, i]) for i in range(len(samples))],
                              torch.Generator().manual_seed(seed))
    return Preview([s.key for s in samples], out, released)
