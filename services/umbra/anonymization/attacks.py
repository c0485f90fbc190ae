"""What an attacker and a user learn from released images, measured with the strongest classifier recipe we have
(umbra.classifiers.recipes.NONPRIVATE): a weak evaluator would flatter the protection.

- `adversary_<attribute>_bacc`, per protected attribute: a classifier retrained on the released training images
  with their TRUE labels (an attacker who knows some people's attribute), tested on the released test images
  against their true labels: balanced accuracy (chance is 1 / the number of values).
- `kept_<attribute>_utility_ratio`, per kept attribute: a classifier trained on the released training images,
  tested on the ORIGINAL test images, over one trained on the originals (1: nothing of it was lost), with both
  balanced accuracies beside it.

    figures = measure(original_reader, released_reader, protected=["gender"], kept=["skin_tone"], seed=0)

For a preview, where a few released images are all there is: what a classifier trained on the original
training images says of each one's protected attribute (the share it still gets right, beside chance).

    judge = AttributeJudge.train(original_reader, "gender", seed=0)     # None for a number or too few samples
    judge.agreement(released_pngs, true_values)                          # 0.25: one in four still right

An attribute with more than MAX_CLASSES values (a number such as age) or too few labelled samples is skipped,
and `skipped` says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from umbra.classifiers import loop, recipes
from umbra.classifiers.data import LabelledImages, decode, load_keys, load_split
from umbra.classifiers.evaluation import measure as score
from umbra.runtime.errors import InvalidInput
from umbra.storage.datasets import DatasetReader

MAX_CLASSES = 16
MIN_SAMPLES = 5  # per split and attribute: fewer, and no figure is given (the report says why)


def _balanced_accuracy(model, data: LabelledImages) -> float:
    return score(loop.predict(model, data), data.labels, data.classes).balanced_accuracy


def _splits(original: DatasetReader, released: DatasetReader, attribute: str, size: int) -> dict[str, LabelledImages]:
    """The original and released images of each split, labelled with the attribute's true values."""
    data = {"original_train": load_split(original, task=attribute, split="train", image_size=size)}
    classes = data["original_train"].classes
    if len(classes) > MAX_CLASSES:
        raise InvalidInput(attribute, f"has {len(classes)} values (more than {MAX_CLASSES}): not a category")
    data["original_test"] = load_split(original, task=attribute, split="test", image_size=size, classes=classes)
    present = {s.key for s in released.samples()}  # a sample the anonymizer left out is not released
    for split in ("train", "test"):
        kept = data[f"original_{split}"]
        labels = {k: classes[int(v)] for k, v in zip(kept.keys, kept.labels, strict=True) if k in present}
        data[f"released_{split}"] = load_keys(released, labels, image_size=size, classes=classes)
    small = [name for name, part in data.items() if len(part) < MIN_SAMPLES]
    if small:
        raise InvalidInput(attribute, f"{small[0]} has fewer than {MIN_SAMPLES} labelled samples")
    return data


def measure(original: DatasetReader, released: DatasetReader, *, protected: list[str], kept: list[str], seed: int,
            progress: Callable[[str], None] = lambda stage: None,
            cancelled: Callable[[], bool] = lambda: False) -> dict:
    """The figures above: {"metrics": {name: value}, "skipped": {attribute: why}}."""
    recipe = recipes.NONPRIVATE
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for role, attributes in (("protected", protected), ("kept", kept)):
        for attribute in attributes:
            if cancelled():
                return {"metrics": metrics, "skipped": skipped}
            try:
                data = _splits(original, released, attribute, recipe.image_size)
            except InvalidInput as exc:
                skipped[attribute] = exc.message
                continue
            if role == "protected":
                progress(f"retraining an adversary on the released images for {attribute}")
                adversary, _ = recipes.fit(recipe, data["released_train"], seed=seed)
                metrics[f"adversary_{attribute}_bacc"] = _balanced_accuracy(adversary, data["released_test"])
                metrics[f"adversary_{attribute}_chance"] = 1.0 / len(data["released_train"].classes)
            else:
                progress(f"training {attribute} classifiers on released and on original images")
                on_released, _ = recipes.fit(recipe, data["released_train"], seed=seed)
                on_original, _ = recipes.fit(recipe, data["original_train"], seed=seed)
                kept_bacc = _balanced_accuracy(on_released, data["original_test"])
                baseline = _balanced_accuracy(on_original, data["original_test"])
                metrics[f"kept_{attribute}_bacc_trained_on_released"] = kept_bacc
                metrics[f"kept_{attribute}_bacc_trained_on_originals"] = baseline
                metrics[f"kept_{attribute}_utility_ratio"] = kept_bacc / baseline if baseline else 0.0
    return {"metrics": metrics, "skipped": skipped}


@dataclass(frozen=True)
class AttributeJudge:
    """A classifier of one protected attribute, trained on the original training images (the strongest recipe)."""

    attribute: str
    model: torch.nn.Module
    classes: list[str]
    image_size: int

    @classmethod
    def train(cls, original: DatasetReader, attribute: str, *, seed: int) -> "AttributeJudge | None":
        """None when the attribute is a number (more than MAX_CLASSES values) or has too few labelled samples."""
        recipe = recipes.NONPRIVATE
        try:
            data = load_split(original, task=attribute, split="train", image_size=recipe.image_size)
        except InvalidInput:
            return None
        if len(data.classes) > MAX_CLASSES or len(data) < MIN_SAMPLES:
            return None
        model, _ = recipes.fit(recipe, data, seed=seed)
        return cls(attribute, model, list(data.classes), recipe.image_size)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def agreement(self, images: list[bytes], true_values: list[str]) -> float:
        """The share of `images` whose predicted attribute is their true (original) value."""
        if not images:
            raise ValueError("no images")
        batch = torch.from_numpy(np.stack([decode(data, self.image_size) for data in images]))
        unknown = len(self.classes)  # a value the classifier never saw counts as not recognised
        labels = torch.tensor([self.classes.index(v) if v in self.classes else unknown for v in true_values])
        predicted = loop.predict(self.model, LabelledImages(batch, labels, self.classes, [""] * len(images)))
        return float((predicted == labels).float().mean())
