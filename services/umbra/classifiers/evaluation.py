"""Evaluating a classifier version on a labelled split: accuracy, balanced accuracy, per-class precision and recall.

    job = plan(registry, bucket, model=("faces-cnn", 3), reader=reader, split="test")   # NOT_FOUND before compute
    evaluation = run(job, progress=lambda stage, total=0: None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from umbra.classifiers.architectures import create
from umbra.classifiers.catalog import StoredModel
from umbra.classifiers.data import load_split
from umbra.classifiers.loop import predict
from umbra.classifiers.registry import ModelRegistry
from umbra.storage.datasets import DatasetReader


@dataclass(frozen=True)
class ClassScore:
    name: str
    precision: float
    recall: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    sample_count: int
    accuracy: float
    balanced_accuracy: float  # the mean recall over the classes present
    per_class: list[ClassScore]


@dataclass(frozen=True)
class Job:
    registry: ModelRegistry
    bucket: str
    stored: StoredModel
    reader: DatasetReader
    split: str


def plan(registry: ModelRegistry, bucket: str, *, model: tuple[str, int], reader: DatasetReader, split: str) -> Job:
    return Job(registry, bucket, registry.get(bucket, *model), reader, split)


def run(job: Job, *, progress: Callable[..., None] = lambda stage, **_: None) -> Evaluation:
    stored = job.stored
    progress("loading data")
    data = load_split(job.reader, task=stored.record["task"], split=job.split, image_size=stored.config.image_size,
                      classes=stored.config.classes)
    model = create(stored.config)
    model.load_state_dict(job.registry.weights(job.bucket, stored.model, stored.version))
    progress("predicting", total=len(data))
    return measure(predict(model, data), data.labels, data.classes)


def measure(predicted: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> Evaluation:
    scores, recalls = [], []
    for index, name in enumerate(classes):
        actual, chosen = labels == index, predicted == index
        hits, support = int((actual & chosen).sum()), int(actual.sum())
        recall = hits / support if support else 0.0
        precision = hits / int(chosen.sum()) if int(chosen.sum()) else 0.0
        if support:
            recalls.append(recall)
        scores.append(ClassScore(name, precision, recall, support))
    return Evaluation(len(labels), float((predicted == labels).float().mean()),
                      sum(recalls) / len(recalls) if recalls else 0.0, scores)
