"""The training loop: plain SGD/Adam, or DP-SGD through Opacus (Poisson sampling, per-sample clipping, noise,
logical vs physical batches with BatchMemoryManager, PRV accounting with an RDP fallback).

A run can stop after any epoch and resume from a `Checkpoint` (weights, optimizer, accountant history, step
count, RNG state): the resumed run's epsilon counts every step taken before the stop.

    result = train(model=model, data=train_set, hyper=Hyperparameters(epochs=5), dp=DPSettings(target_epsilon=8,
                   target_delta=1e-5), seed=0, on_epoch=save_checkpoint)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from umbra.runtime.errors import InvalidInput
from umbra.classifiers.data import LabelledImages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 10
    batch_size: int = 256  # logical batch (expected size under Poisson sampling)
    physical_batch_size: int = 64  # what fits in memory at once (DP only)
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # "adam" or "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    flip: bool = True  # random horizontal flips
    schedule: str = "constant"  # learning rate: "constant", or "cosine" (annealed to 0 over the run, per step)


@dataclass(frozen=True)
class DPSettings:
    target_delta: float
    target_epsilon: float = 0.0  # give this, or noise_multiplier
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    poisson_sampling: bool = True
    accountant: str = "prv"  # "prv" (falls back to "rdp" where it fails) or "rdp"
    secure_mode: bool = False


@dataclass
class Checkpoint:
    """Everything a stopped run needs to go on exactly where it was."""

    epoch: int  # epochs finished
    steps: int
    model: dict
    optimizer: dict
    noise_multiplier: float = 0.0
    accountant: dict = field(default_factory=dict)
    rng: torch.Tensor | None = None
    ema: dict = field(default_factory=dict)  # an exponential moving average of the weights, where one is kept


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    steps: int
    epsilon: float  # 0 without DP
    accountant: str


@dataclass(frozen=True)
class TrainResult:
    steps: int
    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    final_loss: float


SCHEDULES = ("constant", "cosine")


def learning_rate(hyper: Hyperparameters, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total_steps`."""
    if hyper.schedule == "cosine":
        return hyper.learning_rate * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return hyper.learning_rate


def poisson_rate(data_size: int, batch_size: int) -> float:
    """The sampling rate Opacus actually uses: 1 / (batches per epoch), not batch_size / n. Calibrating the noise
    for batch_size / n (larger) would add more noise than the target epsilon needs."""
    return 1.0 / math.ceil(data_size / batch_size)


def validate(*, data_size: int, hyper: Hyperparameters, dp: DPSettings | None) -> None:
    """Bad settings are refused before any compute, naming the field."""
    if hyper.epochs < 1:
        raise InvalidInput("hyperparameters.epochs", "must be at least 1")
    if not 1 <= hyper.batch_size <= data_size:
        raise InvalidInput("hyperparameters.batch_size", f"must be between 1 and the {data_size} training samples")
    if hyper.physical_batch_size < 1:
        raise InvalidInput("hyperparameters.physical_batch_size", "must be at least 1")
    if not (math.isfinite(hyper.learning_rate) and hyper.learning_rate > 0):
        raise InvalidInput("hyperparameters.learning_rate", "must be a positive number")
    if hyper.optimizer not in ("adam", "sgd"):
        raise InvalidInput("hyperparameters.optimizer", "must be 'adam' or 'sgd'")
    if hyper.schedule not in SCHEDULES:
        raise InvalidInput("hyperparameters.schedule", f"must be one of {', '.join(SCHEDULES)}")
    if dp is None:
        return
    if not 0 < dp.target_delta < 1 / data_size:
        raise InvalidInput("differential_privacy.target_delta",
                           f"must be in (0, 1/n) = (0, {1 / data_size:.3g}) for n = {data_size} samples")
    if (dp.target_epsilon > 0) == (dp.noise_multiplier > 0):
        raise InvalidInput("differential_privacy",
                           "give exactly one of target_epsilon (> 0) and noise_multiplier (> 0)")
    if dp.target_epsilon < 0 or not math.isfinite(dp.target_epsilon):
        raise InvalidInput("differential_privacy.target_epsilon", "must be a positive number")
    if not (math.isfinite(dp.max_grad_norm) and dp.max_grad_norm > 0):
        raise InvalidInput("differential_privacy.max_grad_norm", "must be a positive number")
    if dp.accountant not in ("prv", "rdp"):
        raise InvalidInput("differential_privacy.accountant", "must be 'prv' or 'rdp'")


def epsilon_of(accountant, delta: float, preferred: str) -> tuple[float, str]:
    """Epsilon of the steps recorded so far: PRV where it works, else RDP on the same history (an upper bound
    either way; never rounded down)."""
    from opacus.accountants import RDPAccountant

    if not accountant.history:
        return 0.0, preferred
    if preferred == "prv":
        try:
            return float(accountant.get_epsilon(delta)), "prv"
        except Exception as exc:  # noqa: BLE001 - PRV's numerical domain is limited at large epsilon
            log.info("PRV accountant failed (%s); using RDP", exc)
    rdp = RDPAccountant()
    rdp.history = list(accountant.history)
    return float(rdp.get_epsilon(delta)), "rdp"


def calibrate_noise(dp: DPSettings, sample_rate: float, epochs: int, steps: int) -> tuple[float, str]:
    """The noise multiplier for `steps` steps at `sample_rate` that reaches dp.target_epsilon (or the one given),
    and the accountant that calibrated it (PRV, else RDP)."""
    from opacus.accountants.utils import get_noise_multiplier

    if dp.noise_multiplier > 0:
        return dp.noise_multiplier, dp.accountant
    for name in ([dp.accountant, "rdp"] if dp.accountant == "prv" else [dp.accountant]):
        try:
            sigma = get_noise_multiplier(target_epsilon=dp.target_epsilon, target_delta=dp.target_delta,
                                         sample_rate=sample_rate, steps=steps, accountant=name)
            return float(sigma), name
        except Exception as exc:  # noqa: BLE001
            log.info("noise calibration with %s failed (%s)", name, exc)
    raise InvalidInput("differential_privacy.target_epsilon",
                       f"no noise multiplier reaches epsilon {dp.target_epsilon} at delta {dp.target_delta}")


def train(*, model: nn.Module, data: LabelledImages, hyper: Hyperparameters, dp: DPSettings | None, seed: int,
          on_epoch: Callable[[EpochReport, Checkpoint], None] | None = None, resume: Checkpoint | None = None,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Trains `model` in place. `on_epoch` gets a report and a checkpoint after every epoch; `should_stop` is
    checked between batches (cancellation)."""
    validate(data_size=len(data), hyper=hyper, dp=dp)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if resume is not None:
        model.load_state_dict(resume.model)  # the whole network, before any part of it is wrapped
        if resume.rng is not None:
            generator.set_state(resume.rng)
    full = model
    stem = getattr(model, "fixed_stem", None)
    if stem is not None:
        # A parameter-free first stage (the ScatterNets): computed once for every image and its mirror image, and
        # only the rest of the network is trained (and made private) on its outputs.
        inputs = (stem_outputs(stem, data.images, mirrored=False), stem_outputs(stem, data.images, mirrored=True))
        model = model.trainable()
        dataset = TensorDataset(torch.arange(len(data)), data.labels)
    else:
        dataset = TensorDataset(data.images, data.labels)
    loader = DataLoader(dataset, batch_size=hyper.batch_size, shuffle=True, generator=generator)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=hyper.learning_rate, weight_decay=hyper.weight_decay)
        if hyper.optimizer == "adam" else
        torch.optim.SGD(params, lr=hyper.learning_rate, momentum=hyper.momentum, weight_decay=hyper.weight_decay,
                        nesterov=hyper.momentum > 0))
    engine = None
    sigma, accountant_name = 0.0, ""
    if dp is not None:
        from opacus import PrivacyEngine

        sample_rate = poisson_rate(len(data), hyper.batch_size)
        steps_total = hyper.epochs * len(loader)
        sigma, accountant_name = ((resume.noise_multiplier, dp.accountant) if resume is not None else
                                  calibrate_noise(dp, sample_rate, hyper.epochs, steps_total))
        engine = PrivacyEngine(accountant=accountant_name, secure_mode=dp.secure_mode)
        model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=dp.max_grad_norm, poisson_sampling=dp.poisson_sampling)
        if resume is not None and resume.accountant:
            engine.accountant.load_state_dict(resume.accountant)
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
    inner = full  # what checkpoints save: the whole network (its trained part shares the parameters)
    start_epoch, steps, loss_value = (resume.epoch, resume.steps, math.nan) if resume else (0, 0, math.nan)
    criterion = nn.CrossEntropyLoss()
    total_steps = hyper.epochs * len(loader)  # expected, under Poisson sampling
    model.train()
    for epoch in range(start_epoch, hyper.epochs):
        total, count = 0.0, 0
        for images, labels in logical_batches(loader, optimizer, hyper, dp):
            if should_stop():
                return final_result(steps, engine, dp, accountant_name, sigma, loss_value)
            flip = (torch.rand(len(labels), generator=generator) < 0.5) if hyper.flip else None
            if stem is not None:  # `images` holds indices into the stem's outputs
                x = inputs[0][images] if flip is None else torch.where(
                    flip.view(-1, 1, 1, 1), inputs[1][images], inputs[0][images])
            else:
                x = images.float().div_(255.0)
                if flip is not None:
                    x[flip] = x[flip].flip(-1)
            for group in optimizer.param_groups:  # the same for every physical batch of a logical step
                group["lr"] = learning_rate(hyper, steps, total_steps)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), labels)
            loss.backward()
            optimizer.step()
            if dp is None or not getattr(optimizer, "_is_last_step_skipped", False):
                steps += 1
            total += loss.item() * len(labels)
            count += len(labels)
        loss_value = total / max(count, 1)
        epsilon, used = epsilon_of(engine.accountant, dp.target_delta, accountant_name) if engine else (0.0, "")
        report = EpochReport(epoch + 1, hyper.epochs, loss_value, steps, epsilon, used)
        log.info("epoch %d/%d: loss %.4f, epsilon %.3f", epoch + 1, hyper.epochs, loss_value, epsilon)
        if on_epoch is not None:
            on_epoch(report, Checkpoint(
                epoch=epoch + 1, steps=steps, model={k: v.detach().clone() for k, v in inner.state_dict().items()},
                optimizer=optimizer.state_dict(), noise_multiplier=sigma,
                accountant=engine.accountant.state_dict() if engine else {}, rng=generator.get_state()))
    return final_result(steps, engine, dp, accountant_name, sigma, loss_value)


def stem_outputs(stem: nn.Module, images: torch.Tensor, *, mirrored: bool, batch: int = 256) -> torch.Tensor:
    """A fixed stem's outputs for uint8 images (or their mirror images), computed in batches without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start:start + batch].float().div_(255.0)
            out.append(stem(x.flip(-1) if mirrored else x))
    return torch.cat(out)


def logical_batches(loader, optimizer, hyper: Hyperparameters, dp: DPSettings | None):
    """The loader's batches; under DP, split into physical batches of hyper.physical_batch_size (the optimizer
    steps once per logical batch)."""
    if dp is None:
        yield from loader
        return
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=hyper.physical_batch_size,
                            optimizer=optimizer) as physical:
        yield from physical


def final_result(steps: int, engine, dp: DPSettings | None, accountant_name: str, sigma: float, loss: float
                 ) -> TrainResult:
    """What a run spent and reached, from its privacy engine (None: not private)."""
    if engine is None:
        return TrainResult(steps, 0.0, 0.0, "", 0.0, loss)
    epsilon, used = epsilon_of(engine.accountant, dp.target_delta, accountant_name)
    return TrainResult(steps, epsilon, dp.target_delta, used, sigma, loss)


def predict(model: nn.Module, data: LabelledImages, batch_size: int = 256) -> torch.Tensor:
    """Predicted class indices, in eval mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            out.append(model(data.floats(slice(start, start + batch_size))).argmax(1))
    return torch.cat(out)
