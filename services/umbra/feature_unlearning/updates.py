"""The unlearning updates of Warnecke et al. ("Machine Unlearning of Features and Labels", NDSS 2023; reference
code alewarne/MachineUnlearning), on the trainable parameters θ* of a classifier.

Training samples Z are replaced by revised samples Z̃ (removal: Z̃ is empty). With the gradient difference

    Δg = Σ_{z̃ ∈ Z̃} ∇ℓ(z̃; θ*) − Σ_{z ∈ Z} ∇ℓ(z; θ*)

    first order:   θ = θ* − τ · Δg
    second order:  θ = θ* − τ · H⁻¹ Δg,   H the mean Hessian of the training loss at θ*, H⁻¹Δg by LiSSA

LiSSA (Agarwal et al. 2017): u₀ = v, u_{j+1} = v + (1 − damping)·u_j − H_batch·u_j / scale, H⁻¹v ≈ u_J / scale; it
converges to (H + damping·scale·I)⁻¹ v when scale bounds H's spectrum, and diverges otherwise. With `scale` 0
the smallest of 1, 10, 100, … that does not diverge is taken (what users of the reference code do by hand).

Automatic τ (τ = 0 in the settings):
- second order: 1/n, n the training samples after the revision. An influence-function step: θ* minimised
  Σᵢ ℓ(zᵢ), the revised objective's Newton step from θ* is −(n·H)⁻¹Δg (the old objective's gradient at θ* is 0).
  Far from θ* (a large revision) the quadratic model fails and the full step can raise the revised objective;
  the step is then halved (backtracking, as in damped Newton) up to BACKTRACKS times until it does not.
- first order: no such scale exists, so τ is searched on a log grid (half-decades of 1/n, 0 included) for the
  lowest revised objective, estimated on a sample of the kept training data and all revised samples.

An update that diverges (LiSSA's iterates grow past a bound, or keep growing for `patience` steps) or that
raises the revised objective by more than `max_loss_rise` (relative) is refused with the measured values
(`Diverged`); the caller then keeps the model as it was.

A sample's loss ℓ is the training loss: cross-entropy averaged over its views (the image and its mirror image,
since training flips at random).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import cross_entropy
from torch.nn.utils import parameters_to_vector, vector_to_parameters

METHODS = ("first_order", "second_order")
SCALES = tuple(10.0 ** k for k in range(0, 10))  # the automatic LiSSA scale's candidates
TAU_GRID = tuple(10.0 ** (k / 2) for k in range(-4, 9))  # first order: τ·n from 0.01 to 10,000
BACKTRACKS = 6  # second order, automatic τ: halvings of the Newton step tried before the update is refused


@dataclass(frozen=True)
class Lissa:
    damping: float = 0.01
    scale: float = 0.0  # 0: automatic
    depth: int = 50  # recursion steps
    patience: int = 10  # steps in a row the increment may grow before the recursion counts as diverging
    batch_size: int = 64  # samples per Hessian-vector product


@dataclass(frozen=True)
class Settings:
    method: str
    tau: float = 0.0  # 0: automatic
    lissa: Lissa = Lissa()
    max_loss_rise: float = 0.01  # refuse an update raising the revised objective by more than this (relative)


class Diverged(Exception):
    """An update refused as diverging; `measured` names the values that decided it."""

    def __init__(self, message: str, measured: dict[str, float]):
        super().__init__(message)
        self.measured = measured


@dataclass(frozen=True)
class Points:
    """Samples as the trainable part of a classifier sees them: one input tensor per view, and labels."""

    views: tuple[torch.Tensor, ...]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor | slice) -> "Points":
        return Points(tuple(v[index] for v in self.views), self.labels[index])


class Objective:
    """The training loss of `net`'s trainable parameters, per sample (see the module's doc)."""

    def __init__(self, net: nn.Module, chunk: int = 512):
        self.net = net.train()  # GroupNorm only: train and eval compute the same; no dropout anywhere
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.chunk = chunk

    def _loss_sum(self, points: Points) -> torch.Tensor:
        losses = [cross_entropy(self.net(view), points.labels, reduction="none") for view in points.views]
        return torch.stack(losses).mean(0).sum()

    def gradient_sum(self, points: Points) -> torch.Tensor:
        """Σᵢ ∇ℓ(zᵢ), flat."""
        total = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype)
        for start in range(0, len(points), self.chunk):
            grads = torch.autograd.grad(self._loss_sum(points.take(slice(start, start + self.chunk))), self.params)
            total += torch.cat([g.reshape(-1) for g in grads])
        return total

    def hvp(self, points: Points, vector: torch.Tensor) -> torch.Tensor:
        """(mean Hessian over `points`) · vector, by double backpropagation."""
        grads = torch.autograd.grad(self._loss_sum(points) / len(points), self.params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        return torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ vector, self.params)]).detach()

    def loss_sum(self, points: Points) -> float:
        with torch.no_grad():
            return sum(float(self._loss_sum(points.take(slice(s, s + self.chunk))))
                       for s in range(0, len(points), self.chunk))

    def vector(self) -> torch.Tensor:
        return parameters_to_vector(self.params).detach().clone()

    def assign(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            vector_to_parameters(vector, self.params)


@dataclass(frozen=True)
class LissaResult:
    solution: torch.Tensor  # ≈ H⁻¹ v
    scale: float
    iterations: int
    evaluations: int  # per-sample gradient evaluations, one per sample per Hessian-vector product
    tried: tuple[float, ...]  # scales tried, in order


def lissa(objective: Objective, pool: Points, vector: torch.Tensor, settings: Lissa, *, seed: int,
          progress: Callable[[float, int], None] | None = None) -> LissaResult:
    """H⁻¹·vector by LiSSA on batches drawn from `pool`; the automatic scale tries SCALES in order."""
    scales = (settings.scale,) if settings.scale > 0 else SCALES
    evaluations, tried, last = 0, [], None
    for scale in scales:
        tried.append(scale)
        try:
            solution, iterations, used = _recursion(objective, pool, vector, scale, settings, seed, progress)
            return LissaResult(solution, scale, iterations, evaluations + used, tuple(tried))
        except Diverged as exc:
            evaluations += int(exc.measured["evaluations"])
            last = exc
    assert last is not None
    raise Diverged(f"LiSSA diverged at every scale tried ({', '.join(f'{s:g}' for s in tried)}); last: {last}",
                   {**last.measured, "evaluations": evaluations})


def _recursion(objective: Objective, pool: Points, v: torch.Tensor, scale: float, settings: Lissa, seed: int,
               progress) -> tuple[torch.Tensor, int, int]:
    generator = torch.Generator().manual_seed(seed)
    batch = min(settings.batch_size, len(pool))
    bound = 10 * float(v.norm()) / max(settings.damping, 1e-6)  # the fixed point's norm is at most |v|/damping
    u, previous, growing, evaluations = v.clone(), math.inf, 0, 0
    for j in range(1, settings.depth + 1):
        index = torch.randperm(len(pool), generator=generator)[:batch]
        nxt = v + (1 - settings.damping) * u - objective.hvp(pool.take(index), u) / scale
        evaluations += batch
        increment, norm = float((nxt - u).norm()), float(nxt.norm())
        measured = {"scale": scale, "iteration": j, "norm": norm, "bound": bound, "evaluations": evaluations}
        if not math.isfinite(norm) or norm > bound:
            raise Diverged(f"at scale {scale:g}, iteration {j}: |u| = {norm:.4g} passed the bound {bound:.4g}",
                           measured)
        growing = growing + 1 if increment > previous else 0
        if settings.patience and growing >= settings.patience:
            raise Diverged(f"at scale {scale:g}: the increment grew {growing} steps in a row (iteration {j}, "
                           f"|u| = {norm:.4g})", measured)
        u, previous = nxt, increment
        if progress is not None:
            progress(scale, j)
        if increment <= 1e-7 * norm:
            break
    return u / scale, j, evaluations


@dataclass(frozen=True)
class Update:
    parameters: torch.Tensor  # the new trainable parameters, flat
    tau: float
    scale: float  # LiSSA's (0 for first order)
    iterations: int  # LiSSA's (0 for first order)
    gradient_evaluations: int
    update_norm: float
    parameter_norm: float  # |θ*|
    loss_before: float  # revised objective (mean loss) at θ*
    loss_after: float
    scales_tried: tuple[float, ...] = ()


def unlearn(objective: Objective, *, originals: Points, replacements: Points, pool: Points, kept: int,
            settings: Settings, seed: int = 0, progress: Callable[[str], None] | None = None) -> Update:
    """The update for `originals` (the training samples as the model saw them, changed or removed) replaced by
    `replacements`; `pool` is a sample of the `kept` unchanged training samples (the Hessian's batches, and the
    revised objective's estimate; when every training sample changed it is empty, and the Hessian's batches come
    from `originals`). Leaves `objective` holding the new parameters; on Diverged, the old ones."""
    if settings.method not in METHODS:
        raise ValueError(f"method {settings.method!r} is not one of {', '.join(METHODS)}")
    theta = objective.vector()
    n = kept + len(replacements)
    say = progress or (lambda _: None)

    def revised_objective(parameters: torch.Tensor) -> float:
        objective.assign(parameters)
        try:
            kept_part = objective.loss_sum(pool) * kept / len(pool) if kept and len(pool) else 0.0
            return (kept_part + objective.loss_sum(replacements)) / n
        finally:
            objective.assign(theta)

    say("gradient difference")
    delta = objective.gradient_sum(replacements) - objective.gradient_sum(originals)  # no replacements: 0
    evaluations = len(originals) + len(replacements)
    before = revised_objective(theta)
    scale, iterations, tried = 0.0, 0, ()
    if settings.method == "second_order":
        say("inverse Hessian-vector product (LiSSA)")
        result = lissa(objective, pool if len(pool) else originals, delta, settings.lissa, seed=seed,
                       progress=lambda s, j: say(f"LiSSA scale {s:g}, step {j}/{settings.lissa.depth}"))
        direction, scale, iterations, tried = result.solution, result.scale, result.iterations, result.tried
        evaluations += result.evaluations
        tau = settings.tau or 1.0 / n
        if not settings.tau:
            say("backtracking tau")
            for _ in range(BACKTRACKS):
                if revised_objective(theta - tau * direction) <= before * (1 + settings.max_loss_rise):
                    break
                tau /= 2
    else:
        direction = delta
        if settings.tau:
            tau = settings.tau
        else:
            say("choosing tau")
            candidates = [0.0] + [c / n for c in TAU_GRID]
            tau = min(candidates, key=lambda t: revised_objective(theta - t * direction))
    new = theta - tau * direction
    after = revised_objective(new)
    update_norm, theta_norm = float((new - theta).norm()), float(theta.norm())
    measured = {"loss_before": before, "loss_after": after, "update_norm": update_norm, "parameter_norm": theta_norm,
                "tau": tau}
    if not math.isfinite(after) or not math.isfinite(update_norm):
        raise Diverged(f"the update is not finite (|Δθ| = {update_norm:.4g}, loss {after:.4g})", measured)
    if after > before * (1 + settings.max_loss_rise):
        raise Diverged(f"the update raises the revised training loss from {before:.4f} to {after:.4f} "
                       f"(|Δθ| = {update_norm:.4g} against |θ| = {theta_norm:.4g}, tau {tau:.4g})", measured)
    objective.assign(new)
    return Update(new, tau, scale, iterations, evaluations, update_norm, theta_norm, before, after, tried)
