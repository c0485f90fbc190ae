"""Training one generator version, plainly or with DP-SGD: the checks before any compute, the run, and the
training record written with the weights (built here, beside the parameters it describes).

    job = plan(registry, bucket, model="faces-gen", reader=reader, split="train", attributes=["gender", "age"],
               image_size=32, hyper=GeneratorHyper(epochs=10), dp=DPSettings(target_delta=1e-6, target_epsilon=8),
               start=None, seed=1)
    job.reserved_cost()          # what the ledger reserves before the run: the target (ε, δ)
    result = run(job, run_id=run, progress=report, cancelled=lambda: False)   # Result(model, version, record, cost)

`progress(epoch_report, spent)` is called after every epoch with the privacy spent so far (a Cost, or None
without DP). A run stopped after an epoch resumes from its last checkpoint when run again with the same `run_id`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from importlib.metadata import version as package_version

import numpy as np
import torch

from umbra.anonymization import public_generator
from umbra.anonymization.public_generator import PublicGenerator
from umbra.classifiers.catalog import StoredModel
from umbra.classifiers.data import decode
from umbra.classifiers.registry import ModelRegistry
from umbra.diffusion.attributes import Attribute, schema_for
from umbra.diffusion.generator import DESIGNS, build, latent_clip_for, load_matching
from umbra.diffusion.generator_config import GeneratorConfig
from umbra.diffusion.training import GeneratorHyper, train
from umbra.privacy.dp_sgd import Checkpoint, DPSettings, EpochReport, poisson_rate
from umbra.privacy.mechanisms import Cost, dp_sgd_cost
from umbra.runtime import bounds
from umbra.runtime.errors import Cancelled, InvalidInput
from umbra.storage.datasets import DatasetReader

log = logging.getLogger(__name__)
SIZES = (16, 32, 64)
LATENT_DIMS = (8, 512)
_SHAPE = ("design", "channels", "layers_per_block", "attention", "norm_groups", "prediction", "train_timesteps",
          "latent_dim", "latent_clip")


@dataclasses.dataclass(frozen=True)
class Job:
    """A checked generator-training request, ready to run."""

    registry: ModelRegistry
    bucket: str
    model: str
    reader: DatasetReader
    split: str
    attributes: tuple[Attribute, ...]
    image_size: int
    hyper: GeneratorHyper
    dp: DPSettings | None
    start: StoredModel | None  # public pretraining: the generator version to start from
    samples: int  # fully labelled training images
    seed: int
    design: str = "latent"
    latent_dim: int = 64
    public: PublicGenerator | None = None  # or the public generator Umbra ships

    @property
    def config(self) -> GeneratorConfig:
        return GeneratorConfig(image_size=self.image_size, attributes=self.attributes, design=self.design,
                               latent_dim=self.latent_dim, latent_clip=latent_clip_for(self.latent_dim))

    @property
    def frozen(self) -> list[str]:
        """The parts not trained in this run: a latent generator started from a public one keeps its public
        autoencoder and trains its denoiser and attribute embeddings on the tenant's faces (as DP-LDM does)."""
        started = self.start is not None or self.public is not None
        return ["encoder", "decoder"] if started and self.design == "latent" else []

    def privacy(self, epsilon: float, accountant: str, noise_multiplier: float, steps: int) -> dict:
        """What the run spent, with what re-derives it (the record's "privacy")."""
        if self.dp is None:
            return {"dp": False}
        return {"dp": True, "epsilon": epsilon, "delta": self.dp.target_delta, "accountant": accountant,
                "noise_multiplier": noise_multiplier, "sample_rate": poisson_rate(self.samples, self.hyper.batch_size),
                "steps": steps, "max_grad_norm": self.dp.max_grad_norm,
                "noise_multiplicity": self.hyper.noise_multiplicity}

    def reserved_cost(self) -> Cost | None:
        """The target (ε, δ), charged before the run (None without DP: nothing finite to charge)."""
        if self.dp is None:
            return None
        return Cost(self.dp.target_epsilon, self.dp.target_delta, "dp_sgd", "generator training (target)")

    def record(self, result, images: int, seconds: float, fresh: list[str] | None) -> dict:
        return {
            "kind": "generator",
            "dataset": {"dataset": f"datasets/{self.reader.dataset}", "version": self.reader.version,
                        "split": self.split},
            "condition_attributes": [a.name for a in self.attributes], "seed": self.seed, "steps": result.steps,
            "design": self.design, "frozen": self.frozen,
            "train_loss": result.final_loss, "train_seconds": seconds, "images": images,
            "hyperparameters": dataclasses.asdict(self.hyper),
            "privacy": self.privacy(result.epsilon, result.accountant, result.noise_multiplier, result.steps),
            "initialized_from": self.public.record | {"fresh_attributes": fresh} if self.public is not None
            else None if self.start is None else {
                "model": f"models/{self.start.model}", "version": self.start.version,
                "dataset": self.start.record.get("dataset"), "privacy": self.start.record.get("privacy"),
                "fresh_attributes": fresh},
            "code_version": package_version("umbra"),
        }


@dataclasses.dataclass(frozen=True)
class Result:
    model: str
    version: int
    record: dict
    cost: Cost  # ε_g: what the run spent (infinite without DP)


def plan(registry: ModelRegistry, bucket: str, *, model: str, reader: DatasetReader, split: str,
         attributes: list[str], image_size: int, hyper: GeneratorHyper, dp: DPSettings | None,
         start: tuple[str, int] | None, seed: int, design: str = "latent", latent_dim: int = 64,
         public: str = "") -> Job:
    """Every check before any compute; InvalidInput names the request field. `image_size` 0 is the dataset's,
    at most 64 (latent) or 32 (pixel). `public` names a shipped public generator to start from
    (umbra.anonymization.public_generator), instead of a stored version `start`."""
    bounds.seed(seed)
    if public and start is not None:
        raise InvalidInput("initialize_from_public", "give initialize_from or initialize_from_public, not both")
    if public and public not in public_generator.NAMES:
        raise InvalidInput("initialize_from_public", f"is {public!r}: Umbra ships {', '.join(public_generator.NAMES)}")
    if design not in DESIGNS:
        raise InvalidInput("design", f"is {design!r}: must be one of {', '.join(DESIGNS)}")
    if not LATENT_DIMS[0] <= latent_dim <= LATENT_DIMS[1]:
        raise InvalidInput("latent_dim", f"is {latent_dim}: must be {LATENT_DIMS[0]} to {LATENT_DIMS[1]}")
    selected = [s for s in reader.samples() if s.split == split]
    if not selected:
        raise InvalidInput("dataset.split", f"split {split!r} has no samples")
    columns = {c: [s.labels[c] for s in selected if c in s.labels] for c in reader.header.label_columns}
    schema = schema_for(columns, attributes)
    samples = sum(1 for s in selected if all(n in s.labels for n in attributes))
    if samples == 0:
        raise InvalidInput("condition_attributes", f"no sample of split {split!r} has a value for every one of "
                                                   f"{', '.join(attributes)}")
    size = image_size or min(64 if design == "latent" else 32, reader.header.image_size)
    if size not in SIZES:
        raise InvalidInput("image_size", f"is {size}: must be one of {', '.join(map(str, SIZES))}")
    if size > reader.header.image_size:
        raise InvalidInput("image_size", f"is {size} px; the dataset's images are {reader.header.image_size} px")
    hyper = hyper.validate(samples)
    if dp is not None:
        if not 0 < dp.target_delta < 1 / samples:
            raise InvalidInput("privacy.target_delta", f"must be in (0, 1/n) = (0, {1 / samples:.3g}) for the "
                                                       f"{samples} training images")
        dp.validate(samples, field="privacy")  # the ranges of the rest, as classifier training has them
    fresh = GeneratorConfig(image_size=size, attributes=schema, design=design, latent_dim=latent_dim,
                            latent_clip=latent_clip_for(latent_dim))
    stored = None if start is None else _starting_point(registry, bucket, start, reader, fresh)
    shipped = _public_start(public, fresh) if public else None
    return Job(registry, bucket, model, reader, split, schema, size, hyper, dp, stored, samples, seed, design,
               latent_dim, shipped)


def _public_start(name: str, fresh: GeneratorConfig) -> PublicGenerator:
    """The shipped public generator, its card checked against this run before its weights are read (by field),
    then its weights against its card (their SHA-256)."""
    field = "initialize_from_public"
    try:
        config = public_generator.read_card(name).generator_config
        _fits(config, fresh, name, field)
        return public_generator.load(name)
    except public_generator.PublicWeightsError as error:
        raise InvalidInput(field, str(error)) from None


def _starting_point(registry: ModelRegistry, bucket: str, start: tuple[str, int], reader: DatasetReader,
                    fresh: GeneratorConfig) -> StoredModel:
    """The generator to start from (public pretraining): the same design, network, latent and schedule at the same
    size, never trained on the dataset being trained on now. Another tenant's models are not in this tenant's
    registry: naming one is NOT_FOUND."""
    name = f"models/{start[0]}/versions/{start[1]}"
    stored = registry.get(bucket, *start, kind="generator", field="initialize_from")
    _fits(stored.config, fresh, name, "initialize_from")
    if stored.record.get("dataset", {}).get("dataset") == f"datasets/{reader.dataset}":
        raise InvalidInput("initialize_from", f"{name} was trained on datasets/{reader.dataset} itself: start from a "
                                              f"generator trained on public data")
    return stored


def _fits(start: GeneratorConfig, fresh: GeneratorConfig, name: str, field: str) -> None:
    """A starting point must be the same design, network, latent and schedule at the same size."""
    if start.image_size != fresh.image_size:
        raise InvalidInput(field, f"{name} is for {start.image_size} px images, this run for {fresh.image_size} px")
    if start.design != fresh.design:
        raise InvalidInput(field, f"{name} is a {start.design} generator, this run trains a {fresh.design} one")
    if fresh.design == "latent" and start.latent_dim != fresh.latent_dim:
        raise InvalidInput(field, f"{name} has a {start.latent_dim}-number latent, this run {fresh.latent_dim}")
    if any(getattr(start, k) != getattr(fresh, k) for k in _SHAPE):
        raise InvalidInput(field, f"{name} has another network or schedule than this version's generators")


def load_images(job: Job) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's fully labelled images (uint8, N×3×S×S) and their attribute indices."""
    names = [a.name for a in job.attributes]
    images, labels = [], []
    for sample, data in job.reader.iter_images(split=job.split):
        if all(n in sample.labels for n in names):
            images.append(decode(data, job.image_size))
            labels.append([a.index(sample.labels[a.name]) for a in job.attributes])
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def run(job: Job, *, run_id: str, progress: Callable[[EpochReport, Cost | None], None] = lambda report, spent: None,
        stage: Callable[[str], None] = lambda name: None, cancelled: Callable[[], bool] = lambda: False) -> Result:
    """Trains and writes the new version; raises Cancelled when `cancelled()` turns true before it is written."""
    stage("loading images")
    images, labels = load_images(job)
    _check(cancelled)
    torch.manual_seed(job.seed)
    net = build(job.config)
    fresh = None
    if job.public is not None:
        fresh = load_matching(net, job.public.weights, job.public.config)
    elif job.start is not None:
        fresh = load_matching(net, job.registry.weights(job.bucket, job.start.model, job.start.version),
                              job.start.config)
    for part in job.frozen:
        getattr(net, part).requires_grad_(False)
    saved = job.registry.latest_checkpoint(job.bucket, job.model, run_id)
    resume = Checkpoint(**saved) if saved else None

    def on_epoch(report: EpochReport, checkpoint: Checkpoint) -> None:
        job.registry.save_checkpoint(job.bucket, job.model, run_id, report.epoch, dataclasses.asdict(checkpoint))
        spent = job.privacy(report.epsilon, report.accountant, checkpoint.noise_multiplier, report.steps)
        progress(report, dp_sgd_cost(spent, "generator training") if job.dp else None)

    stage("training")
    started = time.monotonic()
    result = train(net, images, labels, job.hyper, job.dp, job.seed, on_epoch=on_epoch, resume=resume,
                   should_stop=cancelled)
    _check(cancelled)
    record = job.record(result, len(images), time.monotonic() - started, fresh)
    stage("writing the generator")
    version = job.registry.write(job.bucket, job.model, job.config, net.state_dict(), record)
    job.registry.delete_checkpoints(job.bucket, job.model, run_id)  # the version is written: nothing resumes now
    cost = dp_sgd_cost(record["privacy"], "generator training")
    log.info("generator %s v%d written (epsilon %s)", job.model, version, cost.epsilon)
    return Result(job.model, version, record, cost)


def _check(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise Cancelled("cancelled by request")
