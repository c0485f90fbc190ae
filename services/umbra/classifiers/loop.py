"""The classifier training loop: plain SGD/Adam, or DP-SGD (umbra.privacy.dp_sgd: Poisson sampling, per-sample
clipping, noise, logical vs physical batches, PRV accounting with an RDP fallback).

A run can stop after any epoch and resume from a `Checkpoint` (weights, optimizer, accountant history, step
count, RNG state): the resumed run's epsilon counts every step taken before the stop.

    result = train(model=model, data=train_set, hyper=Hyperparameters(epochs=5), dp=DPSettings(target_epsilon=8,
                   target_delta=1e-5), seed=0, on_epoch=save_checkpoint)
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from umbra.classifiers.data import LabelledImages
from umbra.privacy.dp_sgd import Checkpoint, DPSettings, EpochReport, TrainResult, World, make_private
from umbra.runtime import bounds
from umbra.runtime.errors import InvalidInput

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


SCHEDULES = ("constant", "cosine")
# The ranges of a request's hyperparameters (0 in the request is the default above, see
# umbra.services.training.convert). Epochs bound the run's compute; batches the memory of a step.
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 4096
MAX_PHYSICAL_BATCH_SIZE = 4096
MAX_LEARNING_RATE = 10.0  # the DP recipes' SGD on a linear head uses 4
MAX_WEIGHT_DECAY = 1.0


def learning_rate(hyper: Hyperparameters, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total_steps`."""
    if hyper.schedule == "cosine":
        return hyper.learning_rate * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return hyper.learning_rate


def validate(*, data_size: int, hyper: Hyperparameters, dp: DPSettings | None) -> None:
    """Bad settings are refused before any compute, naming the field."""
    bounds.integer(hyper.epochs, "hyperparameters.epochs", 1, MAX_EPOCHS)
    if not 1 <= hyper.batch_size <= min(data_size, MAX_BATCH_SIZE):
        raise InvalidInput("hyperparameters.batch_size", f"is {hyper.batch_size}: must be between 1 and the "
                                                         f"{data_size} training samples, at most {MAX_BATCH_SIZE}")
    bounds.integer(hyper.physical_batch_size, "hyperparameters.physical_batch_size", 1, MAX_PHYSICAL_BATCH_SIZE)
    bounds.number(hyper.learning_rate, "hyperparameters.learning_rate", 0, MAX_LEARNING_RATE, open_low=True)
    bounds.number(hyper.momentum, "hyperparameters.momentum", 0, 1, open_high=True)
    bounds.number(hyper.weight_decay, "hyperparameters.weight_decay", 0, MAX_WEIGHT_DECAY)
    if hyper.optimizer not in ("adam", "sgd"):
        raise InvalidInput("hyperparameters.optimizer", "must be 'adam' or 'sgd'")
    if hyper.schedule not in SCHEDULES:
        raise InvalidInput("hyperparameters.schedule", f"must be one of {', '.join(SCHEDULES)}")
    if dp is not None:
        dp.validate(data_size)


def train(*, model: nn.Module, data: LabelledImages, hyper: Hyperparameters, dp: DPSettings | None, seed: int,
          on_epoch: Callable[[EpochReport, Checkpoint], None] | None = None, resume: Checkpoint | None = None,
          should_stop: Callable[[], bool] = lambda: False, processes: int = 1) -> TrainResult:
    """Trains `model` in place. `on_epoch` gets a report and a checkpoint after every epoch; `should_stop` is
    checked between batches (cancellation). `processes` > 1 trains data-parallel on that many local processes
    (umbra.classifiers.distributed): the same epsilon, and rank 0's weights come back into `model`."""
    validate(data_size=len(data), hyper=hyper, dp=dp)
    stem = getattr(model, "fixed_stem", None)
    # A parameter-free first stage (the ScatterNets): computed once for every image and its mirror image, and only
    # the rest of the network is trained (and made private) on its outputs.
    inputs = None if stem is None else (stem_outputs(stem, data.images, mirrored=False),
                                        stem_outputs(stem, data.images, mirrored=True))
    if processes > 1:
        from umbra.classifiers import distributed

        return distributed.train(model=model, data=data, inputs=inputs, hyper=hyper, dp=dp, seed=seed,
                                 on_epoch=on_epoch, resume=resume, should_stop=should_stop,
                                 processes=processes).result
    return train_rank(model=model, data=data, inputs=inputs, hyper=hyper, dp=dp, seed=seed, on_epoch=on_epoch,
                      resume=resume, should_stop=should_stop)


def rank_seed(seed: int, world: World | None, epoch: int = 0) -> int:
    """The seed of a rank's data RNG (Poisson sampling, flips): the run's own on one process or rank 0, a distinct
    one on every other rank (ranks drawing alike would sample their chunks alike), and one per epoch to start at."""
    if (world is None or world.rank == 0) and epoch == 0:
        return seed
    rank = world.rank if world is not None else 0
    return int.from_bytes(hashlib.sha256(f"{seed}/{rank}/{epoch}".encode()).digest()[:7], "big")


def train_rank(*, model: nn.Module, data: LabelledImages, inputs: tuple[torch.Tensor, torch.Tensor] | None,
               hyper: Hyperparameters, dp: DPSettings | None, seed: int,
               on_epoch: Callable[[EpochReport, Checkpoint], None] | None = None, resume: Checkpoint | None = None,
               should_stop: Callable[[], bool] = lambda: False, world: World | None = None) -> TrainResult:
    """One process's training: the whole run, or rank `world.rank` of a data-parallel one (torch.distributed
    initialised). `inputs`: the fixed stem's outputs for the images and their mirror images, when the model has
    one. Every rank of a world calls `on_epoch` alike (pass it to rank 0 alone to keep one checkpoint)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(rank_seed(seed, world))
    if resume is not None:
        model.load_state_dict(resume.model)  # the whole network, before any part of it is wrapped
        state = (resume.rank_rngs[world.rank] if world is not None and len(resume.rank_rngs) == world.size else
                 resume.rng if world is None or world.size == 1 else None)
        if state is not None:
            generator.set_state(state)
        elif world is not None:  # a checkpoint of another number of processes: fresh draws, never the first ones
            generator.manual_seed(rank_seed(seed, world, resume.epoch))
    full = model
    if inputs is not None:
        if getattr(model, "fixed_stem", None) is not None:  # (a rank of a world is given the trainable part alone)
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
    private = make_private(module=model, optimizer=optimizer, data_loader=loader, dp=dp, epochs=hyper.epochs,
                           resume=resume, world=world)
    model, optimizer = private.module, private.optimizer
    steps, loss_value = private.start_steps, math.nan
    criterion = nn.CrossEntropyLoss(reduction="sum")  # divided by the batch below (an empty batch: a loss of 0)
    total_steps = hyper.epochs * len(private.loader)  # expected, under Poisson sampling
    model.train()
    for epoch in range(private.start_epoch, hyper.epochs):
        total, count = 0.0, 0
        for images, labels in private.batches(hyper.physical_batch_size):
            if should_stop():
                return private.result(steps, loss_value)
            flip = (torch.rand(len(labels), generator=generator) < 0.5) if hyper.flip else None
            if inputs is not None:  # `images` holds indices into the stem's outputs
                x = inputs[0][images] if flip is None else torch.where(
                    flip.view(-1, 1, 1, 1), inputs[1][images], inputs[0][images])
            else:
                x = images.float().div_(255.0)
                if flip is not None:
                    x[flip] = x[flip].flip(-1)
            for group in optimizer.param_groups:  # the same for every physical batch of a logical step
                group["lr"] = learning_rate(hyper, steps, total_steps)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), labels) / max(len(labels), 1)
            loss.backward()
            optimizer.step()
            steps += private.stepped()
            total += loss.item() * len(labels)
            count += len(labels)
        loss_value = _mean_loss(total, count, world)
        report = private.report(epoch + 1, hyper.epochs, loss_value, steps)
        log.info("epoch %d/%d: loss %.4f, epsilon %.3f", epoch + 1, hyper.epochs, loss_value, report.epsilon)
        rank_rngs = _gather_rngs(generator, world)
        if on_epoch is not None:  # the checkpoint saves the whole network (its trained part shares the parameters)
            on_epoch(report, private.checkpoint(epoch + 1, steps, full, generator, rank_rngs=rank_rngs))
    return private.result(steps, loss_value)


def _mean_loss(total: float, count: int, world: World | None) -> float:
    """The epoch's mean training loss over every rank's samples."""
    if world is not None and world.size > 1:
        both = torch.tensor([total, float(count)], dtype=torch.float64)
        torch.distributed.all_reduce(both)
        total, count = float(both[0]), int(both[1])
    return total / max(count, 1)


def _gather_rngs(generator: torch.Generator, world: World | None) -> list[torch.Tensor]:
    """Every rank's data RNG state, in rank order (on every rank), for the checkpoint; [] on one process."""
    if world is None or world.size == 1:
        return []
    states: list = [None] * world.size
    torch.distributed.all_gather_object(states, generator.get_state())
    return states


def stem_outputs(stem: nn.Module, images: torch.Tensor, *, mirrored: bool, batch: int = 256) -> torch.Tensor:
    """A fixed stem's outputs for uint8 images (or their mirror images), computed in batches without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start:start + batch].float().div_(255.0)
            out.append(stem(x.flip(-1) if mirrored else x))
    return torch.cat(out)


def predict(model: nn.Module, data: LabelledImages, batch_size: int = 256) -> torch.Tensor:
    """Predicted class indices, in eval mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            out.append(model(data.floats(slice(start, start + batch_size))).argmax(1))
    return torch.cat(out)
