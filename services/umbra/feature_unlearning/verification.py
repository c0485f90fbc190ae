"""Judging an unlearning update against retraining from scratch on the revised data (ALGORITHMS.md §1.3): test
accuracy of each model, agreement of predictions, parameter distance, and attribute leakage, the balanced
accuracy of a probe that predicts a protected attribute from a model's penultimate features.

The probe is the same for every model: standardized features, an L2-regularized logistic regression (scikit-
learn, L-BFGS run to convergence, classes weighted to balance), scored by stratified 5-fold cross-validation on
held-out images (none of the models trained on them). What a dataset needs for it is checked, before any compute,
by umbra.feature_unlearning.probe.check_probe.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from umbra.classifiers.architectures import create
from umbra.classifiers.catalog import StoredModel
from umbra.classifiers.data import LabelledImages, load_split
from umbra.classifiers.loop import predict
from umbra.classifiers.registry import ModelRegistry
from umbra.runtime.errors import FailedPrecondition
from umbra.storage.datasets import DatasetReader

FOLDS = 5


def probe_set(reader: DatasetReader, *, task: str, attribute: str, image_size: int,
              classes: list[str] | None = None) -> tuple[LabelledImages, np.ndarray]:
    """The held-out images of a comparison: the version's test split labelled with `task` (class order
    `classes`) and with `attribute`, and each one's `attribute` as a class index (values sorted)."""
    test = load_split(reader, task=task, split="test", image_size=image_size, classes=classes)
    values = {s.key: s.labels[attribute] for s in reader.samples() if s.split == "test" and attribute in s.labels}
    test = test.take([key in values for key in test.keys])
    names = sorted({values[key] for key in test.keys})
    return test, np.array([names.index(values[key]) for key in test.keys])


def features(model: nn.Module, data: LabelledImages, batch: int = 256) -> np.ndarray:
    """Penultimate features in eval mode (as served: mirror-averaged where the model is configured so)."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([model.features(data.floats(slice(s, s + batch))) for s in range(0, len(data), batch)]
                         ).numpy()


def probe_balanced_accuracy(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> float:
    """Cross-validated balanced accuracy of a logistic-regression probe predicting `y` from `x`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(FOLDS, int(np.bincount(y).min()))
    if folds < 2:
        raise ValueError("the probe needs at least two samples of every class of the protected attribute")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000, tol=1e-6, class_weight="balanced"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # "to convergence": never report an unconverged probe
        predicted = cross_val_predict(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float(balanced_accuracy_score(y, predicted))


def accuracy(model: nn.Module, data: LabelledImages) -> tuple[float, torch.Tensor]:
    """Test accuracy and the predictions."""
    predicted = predict(model, data)
    return float((predicted == data.labels).float().mean()), predicted


def parameter_distance(a: nn.Module, b: nn.Module) -> float:
    """L2 distance between two models' trainable parameters."""
    pa = torch.cat([p.detach().reshape(-1) for p in a.parameters() if p.requires_grad])
    pb = torch.cat([p.detach().reshape(-1) for p in b.parameters() if p.requires_grad])
    return float((pa - pb).norm())


def compare(models: dict[str, nn.Module], test: LabelledImages, protected: np.ndarray, *, reference: str,
            seed: int = 0) -> dict:
    """Every comparison of the named models on `test` (the task's labels) and `protected` (the protected
    attribute's class indices, same samples): accuracy and probe per model, and each model's agreement with
    and parameter distance to `reference`."""
    out: dict = {"accuracy": {}, "probe_balanced_accuracy": {}, "agreement": {}, "parameter_distance": {}}
    predictions = {}
    for name, model in models.items():
        out["accuracy"][name], predictions[name] = accuracy(model, test)
        out["probe_balanced_accuracy"][name] = probe_balanced_accuracy(features(model, test), protected, seed=seed)
    for name, model in models.items():
        out["agreement"][name] = float((predictions[name] == predictions[reference]).float().mean())
        out["parameter_distance"][name] = parameter_distance(model, models[reference])
    return out


def against_retrained(registry: ModelRegistry, bucket: str, source: StoredModel, unlearned: nn.Module,
                      retrained: tuple[str, int], reader: DatasetReader, *, attribute: str) -> tuple[dict, int]:
    """The source, unlearned and retrained models compared on `reader`'s test split (the retrained one is the
    reference); and the number of test images. The retrained version must have the source's classes."""
    classes = list(source.config.classes)
    stored = registry.get(bucket, *retrained)
    if list(stored.config.classes) != classes:
        raise FailedPrecondition(f"verification: the revised data has the classes {list(stored.config.classes)}, "
                                 f"the model {classes}: their predictions cannot be compared; the unlearned version "
                                 f"is written", reason="CLASSES_DIFFER")
    models = {"original": create(source.config), "unlearned": unlearned, "retrained": create(source.config)}
    models["original"].load_state_dict(registry.weights(bucket, source.model, source.version))
    models["retrained"].load_state_dict(registry.weights(bucket, *retrained))
    test, protected = probe_set(reader, task=source.record["task"], attribute=attribute,
                                image_size=source.config.image_size, classes=classes)
    return compare(models, test, protected, reference="retrained"), len(test)
