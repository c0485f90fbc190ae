"""Training one classifier version, plainly or with DP-SGD: the checks before any compute, the run, and the
training record written with the weights (built here, beside the parameters it describes).

    job = plan(registry, bucket, model="faces-cnn", reader=reader, task="race", split="train",
               architecture="groupnorm_cnn", hyper=Hyperparameters(epochs=5), image_size=32, width=0, seed=0,
               dp=DPSettings(target_delta=1e-5, target_epsilon=8), start=None, revised=None, removed=())
    result = run(job, run_id=run, progress=report, cancelled=lambda: False)     # Result(version, record)

`progress(stage, epoch=None, checkpoint="", privacy=None)` gets each stage, and after every epoch its report, the
key of the checkpoint just saved and the privacy spent so far (a dict shaped like the record's "privacy").
A run stopped after an epoch resumes from its last checkpoint when run again with the same `run_id`; a run keeps
only that one, and none once its version is written. With `processes` > 1 it trains data parallel on that many
local processes (umbra.classifiers.distributed); one of them dying raises Interrupted, and the run started again
with the same `run_id` resumes from the checkpoint, its epsilon counting every step once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import version as package_version

import torch

from umbra.classifiers import loop
from umbra.classifiers.architectures import IMAGE_SIZES, create
from umbra.classifiers.catalog import StoredModel
from umbra.classifiers.data import load_split
from umbra.classifiers.model_config import ModelConfig
from umbra.classifiers.registry import ModelRegistry
from umbra.classifiers.revision import Change, Revision
from umbra.privacy.dp_sgd import Checkpoint, DPSettings, EpochReport, poisson_rate
from umbra.runtime import bounds
from umbra.runtime.errors import Cancelled, InvalidInput
from umbra.storage.datasets import DatasetReader

log = logging.getLogger(__name__)
MAX_WIDTH = 256  # channels of the network's first stage
DEFAULT_MAX_PROCESSES = 2  # data-parallel processes a worker allows one run (UMBRA_TRAINING_MAX_PROCESSES)


@dataclasses.dataclass(frozen=True)
class Job:
    """A checked training request, ready to run."""

    registry: ModelRegistry
    bucket: str
    model: str
    reader: DatasetReader
    task: str
    split: str
    architecture: str
    hyper: loop.Hyperparameters
    image_size: int
    width: int
    mirror_average: bool
    dp: DPSettings | None
    seed: int
    start: StoredModel | None  # public pretraining: the model version to start from
    revision: tuple[Revision, Change] | None  # train on the dataset as revised
    processes: int = 1  # data-parallel processes (umbra.classifiers.distributed)
    run: str = ""  # the run id (32 hex digits) the caller keeps the run's checkpoints under, when it chose one

    def privacy(self, epsilon: float, accountant: str, noise_multiplier: float, steps: int, samples: int) -> dict:
        """What a DP run spent, with what re-derives it (the record's "privacy")."""
        return {"epsilon": epsilon, "delta": self.dp.target_delta, "accountant": accountant,
                "noise_multiplier": noise_multiplier, "sample_rate": poisson_rate(samples, self.hyper.batch_size),
                "steps": steps, "max_grad_norm": self.dp.max_grad_norm}

    def record(self, classes: list[str], result, metrics: dict, samples: int) -> dict:
        """The training record: data lineage, every parameter, the privacy spent, metrics, seed, code version."""
        h = self.hyper
        return {
            "dataset": {"dataset": f"datasets/{self.reader.dataset}", "version": self.reader.version,
                        "split": self.split},
            "task": self.task, "classes": classes, "seed": self.seed, "steps": result.steps, "metrics": metrics,
            "code_version": package_version("umbra"),
            "hyperparameters": {"epochs": h.epochs, "batch_size": h.batch_size,
                                "physical_batch_size": h.physical_batch_size, "learning_rate": h.learning_rate,
                                "optimizer": h.optimizer, "momentum": h.momentum, "weight_decay": h.weight_decay,
                                "image_size": self.image_size, "width": self.width,
                                "mirror_average": self.mirror_average, "schedule": h.schedule},
            "initialized_from": None if self.start is None else {
                "model": f"models/{self.start.model}", "version": self.start.version,
                "dataset": self.start.record.get("dataset"), "task": self.start.record.get("task"),
                "privacy": self.start.record.get("privacy")},
            "revision": self.revision[0].describe() if self.revision else None,
            "privacy": (self.privacy(result.epsilon, result.accountant, result.noise_multiplier, result.steps,
                                     samples) if self.dp else None),
            "processes": self.processes,
        }


@dataclasses.dataclass(frozen=True)
class Result:
    model: str
    version: int
    record: dict


def plan(registry: ModelRegistry, bucket: str, *, model: str, reader: DatasetReader, task: str, split: str,
         architecture: str, hyper: loop.Hyperparameters, image_size: int, width: int, mirror_average: bool = False,
         dp: DPSettings | None, seed: int, start: tuple[str, int] | None, revised: DatasetReader | None,
         removed: Iterable[str] = (), revise: bool = False, processes: int = 1,
         max_processes: int = DEFAULT_MAX_PROCESSES) -> Job:
    """Every check before any compute; InvalidInput names the request field. `image_size` 0 is the dataset's,
    `width` 0 the starting point's or the default; `revise` trains on the dataset as `revised` and `removed` say;
    `processes` (0: one) data-parallel processes, at most the worker's `max_processes`."""
    processes = processes or 1
    if not 1 <= processes <= max_processes:
        raise InvalidInput("processes", f"is {processes}: this worker trains on 1 to {max_processes} processes "
                                        f"(UMBRA_TRAINING_MAX_PROCESSES); 0 means one")
    if task not in reader.header.label_columns:
        raise InvalidInput("task", f"{task!r} is not a label column of datasets/{reader.dataset} (it has "
                                   f"{', '.join(reader.header.label_columns) or 'none'})")
    bounds.seed(seed)
    image_size = image_size or reader.header.image_size
    if image_size not in IMAGE_SIZES:
        raise InvalidInput("hyperparameters.image_size", f"must be one of {IMAGE_SIZES}")
    if not 0 <= width <= MAX_WIDTH:
        raise InvalidInput("hyperparameters.width", f"must be between 1 and {MAX_WIDTH} (0: the default)")
    stored = None if start is None else _starting_point(registry, bucket, start, reader, architecture, image_size)
    width = width or (stored.config.width if stored else ModelConfig.width)
    if stored is not None and width != stored.config.width:
        raise InvalidInput("hyperparameters.width", f"is {width}, but initialize_from has width {stored.config.width}")
    revision = None
    if revise:
        planned = Revision.plan(reader, revised=revised, removed=removed, field="revision")
        revision = planned, planned.change(task=task, split=split)
    n = revision[1].revised_size if revision else sum(1 for s in reader.samples()
                                                      if s.split == split and task in s.labels)
    if n == 0:
        raise InvalidInput("dataset.split", f"split {split!r} has no samples labelled with {task!r}")
    loop.validate(data_size=n, hyper=hyper, dp=dp)
    if processes > 1 and hyper.batch_size < processes:
        raise InvalidInput("processes", f"is {processes}: more than the {hyper.batch_size} samples of a batch")
    return Job(registry, bucket, model, reader, task, split, architecture, hyper, image_size, width, mirror_average,
               dp, seed, stored, revision, processes)


def _starting_point(registry: ModelRegistry, bucket: str, start: tuple[str, int], reader: DatasetReader,
                    architecture: str, image_size: int) -> StoredModel:
    """The model version to start from (public pretraining): same architecture and image size, and never trained
    on the dataset being trained on now (its weights would not be public for this run)."""
    name = f"models/{start[0]}/versions/{start[1]}"
    stored = registry.get(bucket, *start, field="initialize_from")
    if stored.config.architecture != architecture or stored.config.image_size != image_size:
        raise InvalidInput("initialize_from", f"{name} is a {stored.config.architecture} at "
                                              f"{stored.config.image_size} px; this run trains a {architecture} at "
                                              f"{image_size} px")
    if stored.record.get("dataset", {}).get("dataset") == f"datasets/{reader.dataset}":
        raise InvalidInput("initialize_from", f"{name} was trained on datasets/{reader.dataset} itself: start from "
                                              f"a model trained on public data")
    return stored


def run(job: Job, *, run_id: str, progress: Callable[..., None] = lambda stage, **_: None,
        cancelled: Callable[[], bool] = lambda: False) -> Result:
    """Trains and writes the new version; raises Cancelled when `cancelled()` turns true before it is written."""
    progress("loading data")
    if job.revision is not None:
        revision, change = job.revision
        data = revision.load(change, image_size=job.image_size)
    else:
        data = load_split(job.reader, task=job.task, split=job.split, image_size=job.image_size)
    _check(cancelled)
    config = ModelConfig(job.architecture, len(data.classes), job.image_size, classes=data.classes, width=job.width,
                         mirror_average=job.mirror_average)
    torch.manual_seed(job.seed)
    model = create(config)
    if job.start is not None:
        _load_starting_point(job, model, config)
    saved = job.registry.latest_checkpoint(job.bucket, job.model, run_id)
    resume = Checkpoint(**saved) if saved else None
    if resume is not None:
        run = f"the run {run_id} of a retried request" if run_id == job.run else f"operations/{run_id}"
        log.info("resuming %s from its epoch-%d checkpoint", run, resume.epoch)  # run id: the operation's or request's

    def on_epoch(report: EpochReport, checkpoint: Checkpoint) -> None:
        key = job.registry.save_checkpoint(job.bucket, job.model, run_id, report.epoch, dataclasses.asdict(checkpoint))
        spent = (job.privacy(report.epsilon, report.accountant, checkpoint.noise_multiplier, report.steps, len(data))
                 if job.dp else None)
        progress("training", epoch=report, checkpoint=key, privacy=spent)

    result = loop.train(model=model, data=data, hyper=job.hyper, dp=job.dp, seed=job.seed, on_epoch=on_epoch,
                        resume=resume, should_stop=cancelled, processes=job.processes)
    _check(cancelled)
    metrics = {"train_loss": result.final_loss}
    try:
        val = load_split(job.reader, task=job.task, split="val", image_size=job.image_size, classes=data.classes)
        metrics["val_accuracy"] = float((loop.predict(model, val) == val.labels).float().mean())
    except InvalidInput:
        pass  # no validation split
    record = job.record(data.classes, result, metrics, len(data))
    progress("writing model")
    version = job.registry.write(job.bucket, job.model, config, model.state_dict(), record)
    job.registry.delete_checkpoints(job.bucket, job.model, run_id)  # the version is written: nothing resumes now
    log.info("model %s v%d written (epsilon %.3f)", job.model, version, result.epsilon)
    return Result(job.model, version, record)


def _load_starting_point(job: Job, model: torch.nn.Module, config: ModelConfig) -> None:
    """Every weight of the starting point, except a head whose classes differ (it starts fresh)."""
    start = job.start
    weights = job.registry.weights(job.bucket, start.model, start.version)
    if start.config.classes != config.classes:
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise InvalidInput("initialize_from", f"the weights of models/{start.model}/versions/{start.version} do not "
                                              f"fit this architecture")


def _check(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise Cancelled("cancelled by request")
