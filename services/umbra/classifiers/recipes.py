"""The training service's best recipes for face attribute classifiers, measured by `python -m benchmarks.training`
(gender on the 3,000-face sample; the figures are in the README). Every classifier that measures privacy or
utility elsewhere (distortion, anonymizer, unlearning) trains with these, never with a weaker one.

    recipe = recipes.for_epsilon(8.0)   # None: non-private
    hyper = recipe.hyper

A recipe may start from weights pretrained on public data (`pretrain_epochs` > 0: synthetic faces, labelled
with the same attribute, trained non-privately; they cost no privacy of the real data).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from umbra.classifiers.loop import Hyperparameters


@dataclass(frozen=True)
class Recipe:
    architecture: str
    width: int
    image_size: int
    hyper: Hyperparameters = field(default_factory=Hyperparameters)
    max_grad_norm: float = 1.0  # DP only
    pretrain_epochs: int = 0  # > 0: start from a model trained this long on public synthetic faces
    pretrain_faces: int = 6000

    def fitted(self, train_samples: int) -> "Recipe":
        """The recipe for a training set of this size: the batch at most a quarter of it."""
        batch = min(self.hyper.batch_size, max(1, train_samples // 4))
        return replace(self, hyper=replace(self.hyper, batch_size=batch,
                                           physical_batch_size=min(self.hyper.physical_batch_size, batch)))

    def quick(self, factor: float) -> "Recipe":
        """The same recipe with fewer epochs (for quick benchmark runs)."""
        return replace(self, hyper=replace(self.hyper, epochs=max(1, round(self.hyper.epochs * factor))),
                       pretrain_epochs=max(1, round(self.pretrain_epochs * factor)) if self.pretrain_epochs else 0)


NONPRIVATE = Recipe(
    architecture="groupnorm_cnn", width=32, image_size=32,
    hyper=Hyperparameters(epochs=30, batch_size=64, learning_rate=2e-3, optimizer="adam"))

# Keyed by the target epsilon they were tuned for; for_epsilon picks the nearest one at or below the target.
DP: dict[float, Recipe] = {
    8.0: Recipe(architecture="groupnorm_cnn", width=16, image_size=32, max_grad_norm=1.0,
                hyper=Hyperparameters(epochs=40, batch_size=512, physical_batch_size=256, learning_rate=6e-3)),
}


def for_epsilon(epsilon: float | None) -> Recipe:
    if epsilon is None or epsilon <= 0:
        return NONPRIVATE
    below = [e for e in DP if e <= epsilon]
    return DP[max(below)] if below else DP[min(DP)]
