"""Anonymizing a whole dataset version into a new one, shard by shard and resumably (umbra.storage.derived).

    job = plan(store, bucket, reader, request, output=("faces", 3), fingerprint=...)   # checks, no compute
    result = run(job, net, progress=..., cancelled=...)

The new version keeps every sample's key and split and the kept attributes' labels; each protected attribute's
label is its RELEASED value, and any other label or attribute is dropped (the generator may have changed what
it described). Images are written at the generator's size. Samples without a value for a protected or kept
attribute are left out and counted. The private record (`private/anonymization-record.json`) holds the
settings, the plan, the costs and, per sample, its key, released values and ε; never an original protected
value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version

import numpy as np
import torch

from umbra.anonymization.anonymize import Request, anonymize
from umbra.classifiers.data import decode
from umbra.dataset import manifest as mf
from umbra.runtime.errors import Cancelled, InvalidInput
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader
from umbra.storage.derived import DerivedVersion, png

log = logging.getLogger(__name__)
BATCH = 64
BATCHES_PER_SHARD = 4


@dataclass(frozen=True)
class Job:
    reader: DatasetReader
    request: Request
    samples: list[mf.Sample]
    left_out: int  # samples without a value for a protected or kept attribute
    out: DerivedVersion

    @property
    def chunks(self) -> list[range]:
        n, size = len(self.samples), BATCH * BATCHES_PER_SHARD
        return [range(i, min(i + size, n)) for i in range(0, n, size)]


@dataclass(frozen=True)
class Result:
    samples: int
    left_out: int
    shards: int
    record_key: str
    manifest_key: str


def sample_rng(seed: int, key: str) -> np.random.Generator:
    """Each sample's own random generator for its released values: the same whatever the batching or resume."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")])


def plan(store: ObjectStore, bucket: str, reader: DatasetReader, request: Request, *, output: tuple[str, int],
         fingerprint: str) -> Job:
    needed = [a.name for a in (*request.protected, *request.kept)]
    samples, left_out = [], 0
    for sample in reader.samples():
        if all(name in sample.labels for name in needed):
            for attribute in (*request.protected, *request.kept):
                attribute.index(sample.labels[attribute.name])  # a value the generator does not know: refused now
            samples.append(sample)
        else:
            left_out += 1
    if not samples:
        raise InvalidInput("dataset", f"no sample has a value for every one of {', '.join(needed)}")
    out = DerivedVersion(store, bucket, (reader.dataset, reader.version), output, fingerprint, kind="anonymization")
    out.check()
    return Job(reader, request, samples, left_out, out)


def run(job: Job, net, *, progress: Callable[[int, int, int], None] = lambda done, total, shards: None,
        cancelled: Callable[[], bool] = lambda: False) -> Result:
    """Writes the anonymized version; progress(images_done, images_total, shards_done)."""
    job.out.claim()
    chunks = job.chunks
    size = job.reader.header.image_size
    wanted = {s.key: i for i, s in enumerate(job.samples)}
    parts, done = [], 0
    todo = {mf.shard_name(c): chunk for c, chunk in enumerate(chunks)}
    finished = {shard: job.out.finished(shard) for shard in todo}
    images = torch.empty((len(job.samples), 3, size, size), dtype=torch.uint8)
    if any(part is None for part in finished.values()):
        pixels = images.numpy()
        for sample, data in job.reader.iter_images():
            if sample.key in wanted:
                pixels[wanted[sample.key]] = decode(data, size)
    for c, (shard, chunk) in enumerate(todo.items()):
        part = finished[shard]
        if part is None:
            entries = []
            for start in range(chunk.start, chunk.stop, BATCH):
                if cancelled():
                    raise Cancelled("the anonymization was cancelled; the shards written so far are kept for a "
                                    "rerun of the same request")
                batch = range(start, min(start + BATCH, chunk.stop))
                entries += _anonymize_batch(job, net, batch, images, c)
                progress(done + batch.stop - chunk.start, len(job.samples), c)
            part = job.out.write_shard(shard, entries)
        parts.append(part)
        done += len(chunk)
        progress(done, len(job.samples), c + 1)
    return _finish(job, parts)


def _anonymize_batch(job: Job, net, batch: range, images: torch.Tensor, shard: int) -> list[tuple]:
    request = job.request
    samples = [job.samples[i] for i in batch]
    generator = torch.Generator().manual_seed(request.seed * 1_000_003 + batch.start)
    out, released = anonymize(net, request, images[batch.start:batch.stop], [s.labels for s in samples],
                              [sample_rng(request.seed, s.key) for s in samples], generator)
    kept = {a.name for a in request.kept}
    entries = []
    for i, sample in enumerate(samples):
        labels = {k: v for k, v in sample.labels.items() if k in kept} | released[i]
        new = dataclasses.replace(sample, labels=labels, attributes={}, media_type="image/png")
        entries.append((new, png(out[i].permute(1, 2, 0).numpy()),
                        {"key": sample.key, "released": released[i], "epsilon": request.cost.per_image.epsilon,
                         "delta": request.cost.per_image.delta}))
    return entries


def _finish(job: Job, parts: list[dict]) -> Result:
    request = job.request
    columns = [a.name for a in (*request.protected, *request.kept)]
    header = mf.Header(image_size=request.image_size, label_columns=[c for c in job.reader.header.label_columns
                                                                      if c in columns],
                       attribute_columns=[], shards=[], samples=0, seed=request.seed)
    cost = request.cost
    record = {
        "method": "diffusion-dp",
        "source": {"dataset": f"datasets/{job.reader.dataset}", "version": job.reader.version},
        "generator": {"model": f"models/{request.generator.model}", "version": request.generator.version},
        "protected_attributes": [a.name for a in request.protected],
        "kept_attributes": [a.name for a in request.kept],
        "plan": dataclasses.asdict(request.plan), "start_timestep": request.schedule.start,
        "alpha_bar": request.schedule.alpha_bar, "seed": request.seed, "left_out": job.left_out,
        "privacy": {"per_image": cost.per_image.to_dict(), "charged": cost.charged.to_dict()},
        "code_version": package_version("umbra"),
    }
    record_key, manifest_key = job.out.finish(parts, header, record)
    n = sum(len(p["samples"]) for p in parts)
    log.info("anonymized %d images of datasets/%s/versions/%d into v%d", n, job.reader.dataset,
             job.reader.version, job.out.output[1])
    return Result(n, job.left_out, len(parts), record_key, manifest_key)

