"""Releasing an MDP (copies = 1) or AugMDP (copies > 1) version of a dataset version, shard by shard.

    job = plan(store, bucket, reader, label_column="race", split="train", extractor=stored_model,
               settings=Settings(copies=2, seed=7), output=("faces", 3))      # every check, before compute
    result = run(job, extractor_module, progress=..., cancelled=...)

What is written, all in the tenant's bucket under the output version (`datasets/<d>/v<n>/`):
- `shards/shard-*.tar`: the released images (PNG), each with the sample's ORIGINAL labels and attributes;
  with copies > 1 the keys get a `-c<k>` suffix. Output shards hold four batches each, copy after copy. Images
  are matched and released at the extractor's size (a 32 px extractor releases 32 px images of a 64 px
  dataset); an extractor larger than the dataset's images is refused.
- `upload/manifest.jsonl`, written last: the version is then ready for the coordinator's CommitDatasetVersion,
  which checks every shard and makes it visible (versions are numbered and published by the coordinator only).
- `private/distortion-record.json`: every parameter, the seed, and for each released sample its source key,
  its start image's key and class, and its final feature loss. This is exactly the mapping MDP hides, so it is
  kept beside the version for the tenant and never exported with it.

Resuming: each finished shard leaves `private/parts/<shard>.json` (its manifest lines and record rows), written
after the shard itself; a rerun of the same request skips those shards and recomputes nothing else (start
images are drawn up front from the seed, and matching is deterministic). `private/run.json` names the request a
version's parts belong to, so a different request can never mix its shards into them.

Memory: the selected samples are decoded once and held as uint8 (12 KiB per 64 px image), because any of them
may be drawn as a start image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version

import numpy as np
import torch
from torch import nn

from umbra.classifiers.catalog import StoredModel
from umbra.classifiers.data import decode
from umbra.dataset import manifest as mf
from umbra.mdp.feature_matching import choose_starts, match_features
from umbra.runtime import bounds
from umbra.runtime.errors import InvalidInput
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader
from umbra.storage.derived import DerivedVersion, png

log = logging.getLogger(__name__)
START_POLICIES = ("random_other_class",)
BATCHES_PER_SHARD = 4
# The ranges of a DistortDatasetRequest's numbers (0 in the request is the default, except for copies).
MAX_COPIES = 16
MAX_STEPS = 10_000
MAX_STEP_SIZE = 10.0
MAX_BATCH_SIZE = 4096


@dataclass(frozen=True)
class Settings:
    copies: int = 1  # T: 1 is MDP, more is AugMDP
    steps: int = 100
    step_size: float = 0.1
    momentum: float = 0.0  # 0: the paper's update (0.7 with steps of 0.06: its loss in a third of the steps)
    batch_size: int = 128
    seed: int = 0
    start_policy: str = "random_other_class"

    def validate(self) -> "Settings":
        if not 1 <= self.copies <= MAX_COPIES:
            raise InvalidInput("copies", f"is {self.copies}: must be 1 (MDP) to {MAX_COPIES} (AugMDP)")
        if not 1 <= self.steps <= MAX_STEPS:
            raise InvalidInput("steps", f"is {self.steps}: must be 1 to {MAX_STEPS} (0: the default 100)")
        if not 0 < self.step_size <= MAX_STEP_SIZE:
            raise InvalidInput("step_size", f"is {self.step_size}: must be above 0 and at most {MAX_STEP_SIZE:g} (0: "
                                            f"the default 0.1)")
        if not 0 <= self.momentum < 1:
            raise InvalidInput("momentum", f"is {self.momentum}: must be at least 0 and below 1")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput("batch_size", f"is {self.batch_size}: must be 1 to {MAX_BATCH_SIZE} (0: the default "
                                             f"128)")
        bounds.seed(self.seed)
        if self.start_policy not in START_POLICIES:
            raise InvalidInput("start_policy", f"must be one of {', '.join(START_POLICIES)}")
        return self


@dataclass(frozen=True)
class Job:
    """A checked request: what to read, what to write, and how."""

    store: ObjectStore
    bucket: str
    reader: DatasetReader
    split: str  # "" for every split
    label_column: str
    classes: list[str]
    samples: list[mf.Sample]  # the selected ones, in manifest order
    unlabelled: int  # samples of the split left out: they lack the label column
    image_size: int  # the extractor's: images are matched and released at this size
    extractor: StoredModel  # its config and record, read once by the plan
    settings: Settings
    output: tuple[str, int]  # (dataset, version)

    @property
    def shard_samples(self) -> int:
        return BATCHES_PER_SHARD * self.settings.batch_size

    @property
    def chunks(self) -> list[range]:
        n, size = len(self.samples), self.shard_samples
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def output_key(self, key: str, copy: int) -> str:
        return key if self.settings.copies == 1 else f"{key}-c{copy}"

    def fingerprint(self) -> str:
        """What identifies the request, so parts of another request are never reused."""
        what = {"dataset": self.reader.dataset, "version": self.reader.version, "split": self.split,
                "label_column": self.label_column, "extractor": [self.extractor.model, self.extractor.version],
                "settings": dataclasses.asdict(self.settings)}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    @property
    def out(self) -> DerivedVersion:
        return DerivedVersion(self.store, self.bucket, (self.reader.dataset, self.reader.version), self.output,
                              self.fingerprint(), kind="distortion")


@dataclass(frozen=True)
class Result:
    samples: int
    unlabelled: int
    shards: int
    feature_loss: float  # mean final feature loss over every released image
    record_key: str
    manifest_key: str


def plan(store: ObjectStore, bucket: str, reader: DatasetReader, *, label_column: str, split: str,
         extractor: StoredModel, settings: Settings, output: tuple[str, int]) -> Job:
    """Checks everything before any compute; InvalidInput names the field, FailedPrecondition the state."""
    settings.validate()
    header = reader.header
    if label_column not in header.label_columns:
        raise InvalidInput("label_column", f"{label_column!r} is not a label column of "
                                           f"datasets/{reader.dataset}/versions/{reader.version} (it has "
                                           f"{', '.join(header.label_columns) or 'none'})")
    in_split = [s for s in reader.samples() if not split or s.split == split]
    samples = [s for s in in_split if label_column in s.labels]
    if not samples:
        raise InvalidInput("dataset.split", f"no sample{f' of split {split!r}' if split else ''} is labelled with "
                                            f"{label_column!r}")
    classes = sorted({s.labels[label_column] for s in samples}, key=lambda v: (len(v), v))
    if len(classes) < 2:
        raise InvalidInput("dataset", f"every selected sample has {label_column} = {classes[0]!r}: MDP needs at "
                                      f"least two classes (each start image is of another class)")
    _check_extractor(extractor, label_column, classes, header.image_size)
    job = Job(store, bucket, reader, split, label_column, classes, samples, len(in_split) - len(samples),
              extractor.config.image_size, extractor, settings, output)
    _check_output(job)
    return job


def _check_extractor(extractor: StoredModel, label_column: str, classes: list[str], image_size: int) -> None:
    name = f"models/{extractor.model}/versions/{extractor.version}"
    task = extractor.record.get("task")
    if task != label_column:
        raise InvalidInput("feature_extractor", f"{name} was trained on {task!r}, not on {label_column!r}: the "
                                                f"extractor must be trained on the label being protected")
    unknown = sorted(set(classes) - set(extractor.config.classes))
    if unknown:
        raise InvalidInput("feature_extractor", f"{name} was trained on the classes "
                                                f"{', '.join(extractor.config.classes)}; the dataset also has "
                                                f"{', '.join(unknown)}")
    if extractor.config.image_size > image_size:
        raise InvalidInput("feature_extractor", f"{name} takes {extractor.config.image_size} px images; the "
                                                f"dataset's are only {image_size} px")


def _check_output(job: Job) -> None:
    job.out.check()
    # Suffixed keys cannot collide (stripping the last "-c<k>" gives the source back), but can grow too long.
    longest = max((s.key for s in job.samples), key=len)
    try:
        mf.validate_key(job.output_key(longest, job.settings.copies - 1))
    except mf.ManifestError as exc:
        raise InvalidInput("copies", f"a released key would be invalid: {exc}") from None


def run(job: Job, extractor: nn.Module, *,
        progress: Callable[[int, int, int, float], None] = lambda done, total, shards, loss: None,
        cancelled: Callable[[], bool] = lambda: False) -> Result:
    """Writes the released version; `progress(images_done, images_total, shards_done, last_batch_loss)`."""
    settings, out = job.settings, job.out
    out.claim()
    images = _load(job)
    labels = torch.tensor([job.classes.index(s.labels[job.label_column]) for s in job.samples])
    generator = torch.Generator().manual_seed(settings.seed)
    starts = [choose_starts(labels, generator) for _ in range(settings.copies)]  # drawn up front: resumable
    chunks = job.chunks
    total, done, shards_done = settings.copies * len(job.samples), 0, 0
    parts: list[dict] = []
    for copy in range(settings.copies):
        for c, chunk in enumerate(chunks):
            shard = mf.shard_name(copy * len(chunks) + c)
            part = out.finished(shard)
            if part is None:
                index = torch.tensor(list(chunk))
                originals = images[index].float().div_(255)
                chosen = starts[copy][index]

                def batch_done(n: int, batch_loss: torch.Tensor, base: int = done, shards: int = shards_done) -> None:
                    progress(base + n, total, shards, float(batch_loss.mean()))

                released, losses = match_features(
                    extractor, originals, images[chosen].float().div_(255), steps=settings.steps,
                    step_size=settings.step_size, momentum=settings.momentum, batch_size=settings.batch_size,
                    on_batch=batch_done, cancelled=cancelled)
                part = _write_shard(job, out, shard, copy, chunk, chosen, released, losses)
            parts.append(part)
            done += len(chunk)
            shards_done += 1
            progress(done, total, shards_done, float(np.mean([r["feature_loss"] for r in part["record"]])))
    return _finish(job, out, parts)


def _load(job: Job) -> torch.Tensor:
    size = job.image_size
    wanted = {s.key: i for i, s in enumerate(job.samples)}
    images = torch.empty((len(job.samples), 3, size, size), dtype=torch.uint8)
    pixels = images.numpy()  # the same memory
    for sample, data in job.reader.iter_images(split=job.split or None):
        if sample.key in wanted:
            pixels[wanted[sample.key]] = decode(data, size)
    return images


def _write_shard(job: Job, out: DerivedVersion, shard: str, copy: int, chunk: range, starts: torch.Tensor,
                 released: torch.Tensor, losses: torch.Tensor) -> dict:
    entries = []
    for i, (index, start) in enumerate(zip(chunk, starts.tolist(), strict=True)):
        source = job.samples[index]
        pixels = released[i].mul(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
        sample = dataclasses.replace(source, key=job.output_key(source.key, copy), media_type="image/png")
        entries.append((sample, png(pixels), {
            "key": sample.key, "source": source.key, "start": job.samples[start].key,
            "start_class": job.samples[start].labels[job.label_column], "copy": copy,
            "feature_loss": float(losses[i])}))
    return out.write_shard(shard, entries)


def _finish(job: Job, out: DerivedVersion, parts: list[dict]) -> Result:
    settings, header = job.settings, job.reader.header
    rows = [row for part in parts for row in part["record"]]
    loss = float(np.mean([row["feature_loss"] for row in rows]))
    record = {
        "method": "mdp" if settings.copies == 1 else "augmdp",
        "source": {"dataset": f"datasets/{job.reader.dataset}", "version": job.reader.version, "split": job.split},
        "label_column": job.label_column, "classes": job.classes,
        "feature_extractor": {"model": f"models/{job.extractor.model}", "version": job.extractor.version},
        "settings": dataclasses.asdict(settings), "seed": settings.seed, "feature_loss_mean": loss,
        "unlabelled_left_out": job.unlabelled,
        "code_version": package_version("umbra"),
    }
    skeleton = mf.Header(image_size=job.image_size, label_columns=header.label_columns,
                         attribute_columns=header.attribute_columns, shards=[], samples=0, seed=settings.seed)
    record_key, manifest_key = out.finish(parts, skeleton, record)
    log.info("released %d images of datasets/%s/versions/%d into v%d (feature loss %.4f)", len(rows),
             job.reader.dataset, job.reader.version, job.output[1], loss)
    return Result(len(rows), job.unlabelled, len(parts), loss, record_key, manifest_key)
