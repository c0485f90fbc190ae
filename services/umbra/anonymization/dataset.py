"""Anonymizing a whole dataset version into a new one, shard by shard and resumably (umbra.storage.derived).

    job = plan(store, bucket, reader, request, output=("faces", 3), fingerprint=..., shards=None)  # no compute
    result = run(job, load_net, progress=..., cancelled=...)

Output shard i holds the samples [256 i, 256 i + 256) of the plan's sample list (the source manifest's samples
that have a value for every protected and kept attribute, in manifest order; `umbra.anonymization.shards.shard_count`
says how many shards that makes), and its bytes are a function of the source version, the settings, the seed and i
alone: each sample's released values come from its own generator (`sample_rng`: seed and key), each batch's image
noise from one seeded by the seed and the batch's first sample index. So any replica writes the same bytes for a
shard, whichever other shards it writes or finds. `shards` splits the work across replicas: a run given shard indices
writes those shards and their parts only; a run without (all shards) reuses every part it finds, writes the
rest, then the record and the upload manifest. A run without shards that finds the version already finished (its
record and upload manifest written by an earlier run of the same request: a retried finishing call, or two
Indexed Job pods finishing at once) answers from them and computes nothing.

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

from umbra.anonymization import shards as shard_rule
from umbra.anonymization.anonymize import Request, anonymize
from umbra.classifiers.data import decode
from umbra.dataset import manifest as mf
from umbra.runtime.errors import Cancelled, InvalidInput
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader
from umbra.storage.derived import DerivedVersion, png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    reader: DatasetReader
    request: Request
    samples: list[mf.Sample]
    left_out: int  # samples without a value for a protected or kept attribute
    out: DerivedVersion
    shards: tuple[int, ...] | None = None  # the output shards this run writes (parts only); None: all, then finish

    @property
    def chunks(self) -> list[range]:
        n, size = len(self.samples), shard_rule.SHARD_SAMPLES
        return [range(i, min(i + size, n)) for i in range(0, n, size)]


@dataclass(frozen=True)
class Result:
    samples: int
    left_out: int
    shards: int
    record_key: str  # "" for a run given `shards` (parts only: the run without finishes the version)
    manifest_key: str


def sample_rng(seed: int, key: str) -> np.random.Generator:
    """Each sample's own random generator for its released values: the same whatever the batching or resume."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")])


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The image noise of the batch whose first sample is the plan's sample `start` (a batch never crosses a
    shard, so this is fixed by the shard and the batch's place in it)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + start)


def plan(store: ObjectStore, bucket: str, reader: DatasetReader, request: Request, *, output: tuple[str, int],
         fingerprint: str, shards: list[int] | None = None) -> Job:
    """`shards`: the output shard indices to write (parts only), or None for all and the finished version. The
    fingerprint must not depend on `shards`: every run into one version must be the same request."""
    needed = [a.name for a in (*request.protected, *request.kept)]
    samples, left_out = [], 0
    for sample in reader.samples():
        if shard_rule.complete(sample, needed):
            for attribute in (*request.protected, *request.kept):
                attribute.index(sample.labels[attribute.name])  # a value the generator does not know: refused now
            samples.append(sample)
        else:
            left_out += 1
    if not samples:
        raise InvalidInput("dataset", f"no sample has a value for every one of {', '.join(needed)}")
    count = -(-len(samples) // shard_rule.SHARD_SAMPLES)
    if shards is not None:
        seen: set[int] = set()
        for index in shards:
            if not 0 <= index < count:
                raise InvalidInput("shards", f"{index} is not a shard of this anonymization: it writes {count} "
                                             f"shard{'s' if count > 1 else ''} (0 to {count - 1})")
            if index in seen:
                raise InvalidInput("shards", f"names shard {index} twice")
            seen.add(index)
    out = DerivedVersion(store, bucket, (reader.dataset, reader.version), output, fingerprint, kind="anonymization")
    out.check()
    return Job(reader, request, samples, left_out, out, None if shards is None else tuple(sorted(shards)))


def run(job: Job, net: Callable[[], torch.nn.Module], *,
        progress: Callable[[int, int, int], None] = lambda done, total, shards: None,
        cancelled: Callable[[], bool] = lambda: False) -> Result:
    """Writes the run's shards (every shard an earlier run finished is reused) and, without `job.shards`, the
    record and the upload manifest. `net()` loads the generator, called only when a shard is left to compute;
    progress(images_done, images_total, shards_done), counting the run's own shards."""
    chunks = job.chunks
    chosen = range(len(chunks)) if job.shards is None else job.shards
    if job.out.staged():
        if job.shards is not None:  # a late replica: the version was finished without it
            return Result(sum(len(chunks[c]) for c in chosen), job.left_out, len(chosen), "", "")
        record_key = job.out.key(job.out.record_name)  # written before the upload manifest, by this request's run
        if job.out.store.stat(job.out.bucket, record_key) is not None:  # finished already: nothing to compute
            manifest_key = keys.upload_manifest(*job.out.output)
            return Result(len(job.samples), job.left_out, len(chunks), record_key, manifest_key)
    finished = {c: job.out.finished(mf.shard_name(c)) for c in chosen}
    todo = [c for c in chosen if finished[c] is None]
    model = net() if todo else None
    job.out.claim()
    images, offsets = _load(job, {c: chunks[c] for c in todo})
    total = sum(len(chunks[c]) for c in chosen)
    parts, done = [], 0
    for n, c in enumerate(chosen):
        chunk, part = chunks[c], finished[c]
        if part is None:
            entries = []
            for start in range(chunk.start, chunk.stop, shard_rule.BATCH):
                if cancelled():
                    raise Cancelled("the anonymization was cancelled; the shards written so far are kept for a "
                                    "rerun of the same request")
                batch = range(start, min(start + shard_rule.BATCH, chunk.stop))
                at = offsets[c] + start - chunk.start
                entries += _anonymize_batch(job, model, batch, images[at:at + len(batch)])
                progress(done + batch.stop - chunk.start, total, n)
            part = job.out.write_shard(mf.shard_name(c), entries)
        parts.append(part)
        done += len(chunk)
        progress(done, total, n + 1)
    if job.shards is not None:
        return Result(done, job.left_out, len(parts), "", "")
    return _finish(job, parts)


def _load(job: Job, chunks: dict[int, range]) -> tuple[torch.Tensor, dict[int, int]]:
    """The source images of the chunks' samples, decoded at the source's size, chunk after chunk (and where each
    chunk starts); only the source shards that hold one of them are read."""
    size = job.reader.header.image_size
    offsets, slot, n = {}, {}, 0
    for c, chunk in chunks.items():
        offsets[c] = n
        for i in chunk:
            slot[job.samples[i].key] = n
            n += 1
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    if n:
        pixels = images.numpy()
        for sample, data in job.reader.iter_images(only=slot):
            pixels[slot[sample.key]] = decode(data, size)
    return images, offsets


def _anonymize_batch(job: Job, net, batch: range, images: torch.Tensor) -> list[tuple]:
    request = job.request
    samples = [job.samples[i] for i in batch]
    out, released = anonymize(net, request, images, [s.labels for s in samples],
                              [sample_rng(request.seed, s.key) for s in samples],
                              batch_generator(request.seed, batch.start))
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

