"""Unlearning revised or removed training samples from a classifier version into a new version: the checks before
any compute, the update, and the record written with the weights (the source's record, with what changed).

    job = plan(registry, bucket, source=("faces-cnn", 1), original=reader_v1, revised=reader_v2, removed=(),
               settings=Settings(method="second_order"), output_model="faces-cnn")   # refuses bad input by field
    result = run(job, progress=lambda stage: None, cancelled=lambda: False)        # Result(version, update, ...)
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version as package_version

from torch import nn

from umbra.classifiers.architectures import create
from umbra.classifiers.catalog import StoredModel
from umbra.classifiers.data import load_keys
from umbra.classifiers.registry import ModelRegistry
from umbra.classifiers.revision import Change, Revision
from umbra.feature_unlearning import updates
from umbra.feature_unlearning.classifier import trainable
from umbra.runtime.errors import Cancelled, FailedPrecondition, InvalidInput
from umbra.storage.datasets import DatasetReader

log = logging.getLogger(__name__)
POOL = 256  # kept training samples (one random view each) for the Hessian's batches and the objective's estimate
DP_NOTE = ("the model was trained with DP-SGD; its epsilon covers that training only: this update reads the "
           "changed samples without noise and is not covered by it")


@dataclasses.dataclass(frozen=True)
class Job:
    """A checked Unlearn request, ready to run."""

    registry: ModelRegistry
    bucket: str
    source: StoredModel
    revision: Revision
    change: Change
    settings: updates.Settings
    output_model: str

    def record(self, update: updates.Update, seconds: float) -> dict:
        """The source's training record with the revision, and how it was unlearned."""
        source, change, settings = self.source, self.change, self.settings
        record = {key: value for key, value in source.record.items() if key != "metrics"}
        record.update(code_version=package_version("umbra"), revision=self.revision.describe(),
                      metrics={"revised_train_loss": update.loss_after})
        record["unlearning"] = {
            "method": settings.method, "tau": update.tau, "tau_automatic": not settings.tau,
            "lissa": ({**dataclasses.asdict(settings.lissa), "scale": update.scale, "scales_tried":
                       list(update.scales_tried), "iterations": update.iterations}
                      if settings.method == "second_order" else None),
            "gradient_evaluations": update.gradient_evaluations, "seconds": seconds,
            "source": {"model": f"models/{source.model}", "version": source.version},
            "revision": self.revision.describe(), "changed_samples": len(change.replaced),
            "removed_samples": len(change.removed), "training_samples_after": change.revised_size,
            "update_norm": update.update_norm, "parameter_norm": update.parameter_norm,
            "loss_before": update.loss_before, "loss_after": update.loss_after,
            "privacy": DP_NOTE if source.record.get("privacy") else None,
        }
        return record


@dataclasses.dataclass(frozen=True)
class Result:
    version: int
    update: updates.Update
    seconds: float
    record: dict
    model: nn.Module  # the unlearned network, for a comparison with retraining


def plan(registry: ModelRegistry, bucket: str, *, source: tuple[str, int], original: DatasetReader,
         revised: DatasetReader | None, removed: Iterable[str], settings: updates.Settings,
         output_model: str) -> Job:
    """Every check before any compute; InvalidInput names the request field."""
    model_id, number = source
    stored = registry.get(bucket, model_id, number, field="model")  # NOT_FOUND for another tenant's
    trained = stored.record["dataset"]
    name = f"models/{model_id}/versions/{number}"
    if (trained.get("dataset"), trained.get("version")) != (f"datasets/{original.dataset}", original.version):
        raise InvalidInput("original", f"{name} was trained on {trained.get('dataset')} version "
                                       f"{trained.get('version')}, not datasets/{original.dataset} version "
                                       f"{original.version}")
    removed = list(removed)
    if revised is not None:
        if (revised.dataset, revised.version) == (original.dataset, original.version):
            raise InvalidInput("revision.revised", "is the original version itself: nothing is revised")
    elif not removed:
        raise InvalidInput("revision.removed.keys", "is empty: name the samples to remove")
    revision = Revision.plan(original, revised=revised, removed=removed, field="revision",
                             removed_field="revision.removed.keys")
    change = revision.change(task=stored.record["task"], split=trained.get("split") or "train",
                             classes=list(stored.config.classes))
    if not change.changed:
        raise InvalidInput("revision", f"changes none of the {len(change.kept)} samples {name} was trained on "
                                       f"(split {change.split!r})")
    return Job(registry, bucket, stored, revision, change, settings, output_model)


def run(job: Job, *, progress: Callable[[str], None] = lambda stage: None,
        cancelled: Callable[[], bool] = lambda: False) -> Result:
    """Computes the update and writes it as a new version of the output model. FailedPrecondition
    (UNLEARNING_DIVERGED) when the update is refused: nothing is written then."""
    started = time.perf_counter()
    source, change, revision = job.source, job.change, job.revision
    size = source.config.image_size
    progress("loading the model")
    model = create(source.config)
    model.load_state_dict(job.registry.weights(job.bucket, source.model, source.version))
    objective, points = trainable(model)
    progress(f"loading images ({len(change.replaced)} revised, {len(change.removed)} removed)")
    seed = source.record.get("seed", 0)
    sampled = random.Random(seed).sample(sorted(change.kept), min(POOL, len(change.kept)))
    changed = change.replaced | change.removed
    # one pass over the original version: the changed samples as the model saw them, and the pool
    read = load_keys(revision.original, changed | {k: change.kept[k] for k in sampled}, image_size=size,
                     classes=change.classes)
    originals = points(read.take([k in changed for k in read.keys]))
    pool = points(read.take([k not in changed for k in read.keys]), seed=seed)
    replacements = points(revision.load_replacements(change, image_size=size))
    if cancelled():
        raise Cancelled("cancelled by request")
    try:
        update = updates.unlearn(objective, originals=originals, replacements=replacements, pool=pool,
                                 kept=len(change.kept), settings=job.settings, seed=seed, progress=progress)
    except updates.Diverged as exc:
        raise FailedPrecondition(
            f"the {job.settings.method.replace('_', '-')} update was refused: {exc}. "
            f"models/{source.model}/versions/{source.version} is unchanged and no version was written",
            reason="UNLEARNING_DIVERGED", metadata={k: f"{v:.6g}" for k, v in exc.measured.items()}) from None
    seconds = time.perf_counter() - started
    progress("writing model")
    record = job.record(update, seconds)
    version = job.registry.write(job.bucket, job.output_model, source.config, model.state_dict(), record)
    log.info("unlearned models/%s/versions/%d into models/%s/versions/%d (%s, tau %.4g, %.1f s)", source.model,
             source.version, job.output_model, version, job.settings.method, update.tau, seconds)
    return Result(version, update, seconds, record, model)
