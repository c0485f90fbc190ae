"""A classifier's training data as revised, without writing a new dataset version: the samples of a revised
version replace the original's samples of the same key (image and labels), removed keys are left out, every
other sample stays as it is. The training service retrains on it (to verify an unlearning update); the
unlearning service takes from it which training samples changed.

    revision = Revision.plan(original, revised=reader, removed=[], field="revision")  # refuses bad input
    change = revision.change(task="race", split="train", classes=["0", "1", "2"])     # metadata only
    data = revision.load(change, image_size=32)            # the training set as revised, for retraining

A revised sample that equals its original (same image digest and labels) is not a change. A revised sample
without the task's label takes its original out of the training set (as training skips unlabelled samples).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from umbra.classifiers.data import LabelledImages, concatenate, load_keys
from umbra.dataset.manifest import Sample
from umbra.runtime.errors import InvalidInput
from umbra.storage.datasets import DatasetReader


@dataclass(frozen=True)
class Change:
    """What a revision does to the samples of one split labelled with one task."""

    task: str
    split: str
    classes: list[str]
    kept: dict[str, str]  # key -> label: unchanged training samples
    replaced: dict[str, str]  # key -> original label: training samples whose image or label changed
    replacements: dict[str, str]  # key -> revised label, for the same keys
    removed: dict[str, str]  # key -> original label: training samples left out

    @property
    def revised_size(self) -> int:
        """Training samples after the revision."""
        return len(self.kept) + len(self.replacements)

    @property
    def changed(self) -> bool:
        return bool(self.replaced or self.removed)


@dataclass(frozen=True)
class Revision:
    original: DatasetReader
    revised: DatasetReader | None
    originals: dict[str, Sample]  # every sample of the original version, by key
    replacing: dict[str, Sample]  # key -> revised sample, only where image or labels differ
    removed: frozenset[str]
    field: str  # the request field errors name

    @classmethod
    def plan(cls, original: DatasetReader, *, revised: DatasetReader | None, removed: Iterable[str],
             field: str, removed_field: str | None = None) -> "Revision":
        """Matches the revision to the original by key (manifests only, no images). Refused, naming the
        field: a revised or removed key the original lacks, a key both revised and removed."""
        removed_field = removed_field or f"{field}.removed_keys"
        originals = {s.key: s for s in original.samples()}
        replacing: dict[str, Sample] = {}
        if revised is not None:
            samples = list(revised.samples())
            unknown = [s.key for s in samples if s.key not in originals]
            if unknown:
                raise InvalidInput(f"{field}.revised", f"{len(unknown)} of its {len(samples)} keys are not in "
                                                       f"{original.dataset} version {original.version} (e.g. "
                                                       f"{unknown[0]!r}): revised samples are matched by key")
            replacing = {s.key: s for s in samples if (s.sha256, s.labels) != (originals[s.key].sha256,
                                                                               originals[s.key].labels)}
        removed = frozenset(removed)
        unknown = sorted(k for k in removed if k not in originals)
        if unknown:
            raise InvalidInput(removed_field, f"{len(unknown)} keys are not in {original.dataset} version "
                                              f"{original.version} (e.g. {unknown[0]!r})")
        both = sorted(removed & set(replacing))
        if both:
            raise InvalidInput(removed_field, f"{len(both)} keys are both revised and removed (e.g. {both[0]!r})")
        return cls(original, revised, originals, replacing, removed, field)

    def change(self, *, task: str, split: str, classes: list[str] | None = None) -> Change:
        """The revision's effect on the `split` samples labelled with `task`. With `classes` (a trained model's),
        a revised label outside them is refused; without, they are every label value of the result."""
        kept, replaced, replacements, removed = {}, {}, {}, {}
        for key, sample in self.originals.items():
            if sample.split != split or task not in sample.labels:
                continue
            label = sample.labels[task]
            new = self.replacing.get(key)
            if key in self.removed or (new is not None and task not in new.labels):
                removed[key] = label
            elif new is not None:
                replaced[key], replacements[key] = label, new.labels[task]
            else:
                kept[key] = label
        if not kept and not replacements:
            raise InvalidInput(self.field, f"leaves no sample of split {split!r} labelled with {task!r}: "
                                           f"a model cannot be trained on nothing")
        found = sorted(set(kept.values()) | set(replacements.values()), key=lambda v: (len(v), v))
        if classes is None:
            classes = found
            if len(classes) < 2:
                raise InvalidInput(self.field, f"leaves a single value of {task!r} ({classes[0]!r}) in split "
                                               f"{split!r}")
        else:
            strange = sorted(set(replacements.values()) - set(classes))
            if strange:
                raise InvalidInput(f"{self.field}.revised", f"gives {task!r} the value {strange[0]!r}, which is not "
                                                            f"one of the model's classes ({', '.join(classes)})")
        return Change(task, split, list(classes), kept, replaced, replacements, removed)

    def load(self, change: Change, *, image_size: int) -> LabelledImages:
        """The training set as revised: the kept samples, then the revised ones."""
        parts = [load_keys(self.original, change.kept, image_size=image_size, classes=change.classes)]
        if change.replacements:
            parts.append(self.load_replacements(change, image_size=image_size))
        return concatenate(parts)

    def load_replacements(self, change: Change, *, image_size: int) -> LabelledImages:
        """The revised samples that replace changed ones (removed ones have none)."""
        if self.revised is None or not change.replacements:
            return load_keys(self.original, {}, image_size=image_size, classes=change.classes)
        return load_keys(self.revised, change.replacements, image_size=image_size, classes=change.classes)

    def describe(self) -> dict:
        """For records: which versions, and how many keys."""
        return {"original": {"dataset": f"datasets/{self.original.dataset}", "version": self.original.version},
                "revised": ({"dataset": f"datasets/{self.revised.dataset}", "version": self.revised.version}
                            if self.revised is not None else None),
                "replaced_keys": len(self.replacing), "removed_keys": len(self.removed)}
