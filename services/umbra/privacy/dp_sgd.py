"""DP-SGD through Opacus, the one copy that classifier training (umbra.classifiers.loop) and generator training
(umbra.diffusion.training) share: the settings, Poisson sampling's rate, noise calibration (PRV with an RDP
fallback), the private model/optimizer/loader with logical vs physical batches, the accountant's epsilon, and the
checkpoint a stopped run resumes from (its epsilon counts every step taken before the stop).

    private = make_private(module=model, optimizer=optimizer, data_loader=loader, dp=dp, epochs=5, resume=None)
    for epoch in range(private.start_epoch, 5):
        for x, y in private.batches(physical_batch_size=64):
            ...; private.optimizer.step(); steps += private.stepped()
        on_epoch(private.report(epoch + 1, 5, loss, steps), private.checkpoint(epoch + 1, steps, model, rng))
    result = private.result(steps, loss)

Without DP (`dp=None`) the same calls train plainly: nothing is wrapped, epsilon is 0.

Data-parallel over N processes (`world=World(rank, size)`, torch.distributed initialised by the caller): Opacus's
DifferentiallyPrivateDistributedDataParallel wraps the module (rank 0's weights broadcast), its distributed
optimizer clips each rank's per-sample gradients, adds the noise on rank 0 alone and all-reduces the sums, and
the loader is Opacus's distributed Poisson sampling: each rank draws its share of the dataset at the same rate q
= 1 / (batches per epoch) as one process would, so q, the noise multiplier and the steps, and therefore epsilon,
are those of the one-process run (docs/distributed-training.md). Without DP, torch's DistributedDataParallel and
an equal shard of each epoch's shuffle per rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from umbra.runtime.errors import InvalidInput

log = logging.getLogger(__name__)
ACCOUNTANTS = ("prv", "rdp")
MAX_TARGET_EPSILON = 100.0  # above, DP protects nothing, and calibrating the noise takes ever longer
MAX_NOISE_MULTIPLIER = 1e6  # Opacus's own ceiling when it calibrates (a record's calibrated noise fits under it)
MAX_GRAD_NORM = 1e3  # clipping norms are ~0.1-10


@dataclass(frozen=True)
class DPSettings:
    target_delta: float
    target_epsilon: float = 0.0  # give this, or noise_multiplier
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    poisson_sampling: bool = True
    accountant: str = "prv"  # "prv" (falls back to "rdp" where it fails) or "rdp"
    secure_mode: bool = False

    def validate(self, data_size: int, field: str = "differential_privacy") -> "DPSettings":
        """Refuses bad settings before any compute, naming `field`'s subfield."""
        if not 0 < self.target_delta < 1 / data_size:
            raise InvalidInput(f"{field}.target_delta",
                               f"must be in (0, 1/n) = (0, {1 / data_size:.3g}) for n = {data_size} samples")
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon <= MAX_TARGET_EPSILON):
            raise InvalidInput(f"{field}.target_epsilon", f"is {self.target_epsilon}: must be a positive number, at "
                                                          f"most {MAX_TARGET_EPSILON:g}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier <= MAX_NOISE_MULTIPLIER):
            raise InvalidInput(f"{field}.noise_multiplier", f"is {self.noise_multiplier}: must be a positive number, "
                                                            f"at most {MAX_NOISE_MULTIPLIER:g}")
        if (self.target_epsilon > 0) == (self.noise_multiplier > 0):
            raise InvalidInput(field, "give exactly one of target_epsilon (> 0) and noise_multiplier (> 0)")
        if self.target_epsilon < 0:
            raise InvalidInput(f"{field}.target_epsilon", "must be a positive number")
        if self.noise_multiplier < 0:
            raise InvalidInput(f"{field}.noise_multiplier", "must be a positive number")
        if not (math.isfinite(self.max_grad_norm) and 0 < self.max_grad_norm <= MAX_GRAD_NORM):
            raise InvalidInput(f"{field}.max_grad_norm", f"is {self.max_grad_norm}: must be a positive number, at "
                                                         f"most {MAX_GRAD_NORM:g}")
        if self.accountant not in ACCOUNTANTS:
            raise InvalidInput(f"{field}.accountant", "must be 'prv' or 'rdp'")
        return self


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
    # torch's global RNG, which Opacus draws the noise from: a resumed run goes on with fresh noise instead of
    # drawing the noise of its first steps again (noise used twice would cancel out of two updates' difference)
    noise_rng: torch.Tensor | None = None
    rank_rngs: list = field(default_factory=list)  # each rank's `rng` in a run over several processes


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run over `size` processes (torch.distributed is initialised)."""

    rank: int
    size: int


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


def poisson_rate(data_size: int, batch_size: int) -> float:
    """The sampling rate Opacus actually uses: 1 / (batches per epoch), not batch_size / n. Calibrating the noise
    for batch_size / n (larger) would add more noise than the target epsilon needs."""
    return 1.0 / math.ceil(data_size / batch_size)


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


def calibrate_noise(dp: DPSettings, sample_rate: float, steps: int) -> tuple[float, str]:
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


@dataclass
class Private:
    """A run's module, optimizer and loader: made private by Opacus under DP, as given without. `module` is what
    to call (the wrapped one under DP); checkpoints save the caller's own network."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: torch.utils.data.DataLoader
    dp: DPSettings | None
    engine: object | None  # opacus.PrivacyEngine
    noise_multiplier: float
    accountant: str
    start_epoch: int
    start_steps: int

    def batches(self, physical_batch_size: int) -> Iterator:
        """The loader's batches; under DP, split into physical batches of at most `physical_batch_size` (the
        optimizer steps once per logical batch)."""
        if self.dp is None:
            yield from self.loader
            return
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        with BatchMemoryManager(data_loader=self.loader, max_physical_batch_size=physical_batch_size,
                                optimizer=self.optimizer) as physical:
            yield from physical

    def stepped(self) -> bool:
        """Whether the optimizer step just taken was a real one (not a physical batch inside a logical one)."""
        return self.dp is None or not getattr(self.optimizer, "_is_last_step_skipped", False)

    def epsilon(self) -> tuple[float, str]:
        """Epsilon spent so far and the accountant that bounds it; (0, "") without DP."""
        if self.engine is None:
            return 0.0, ""
        return epsilon_of(self.engine.accountant, self.dp.target_delta, self.accountant)

    def report(self, epoch: int, epochs: int, loss: float, steps: int) -> EpochReport:
        return EpochReport(epoch, epochs, loss, steps, *self.epsilon())

    def checkpoint(self, epoch: int, steps: int, network: nn.Module, rng: torch.Generator, ema=None,
                   rank_rngs: list[torch.Tensor] = ()) -> Checkpoint:
        return Checkpoint(epoch=epoch, steps=steps,
                          model={k: v.detach().clone() for k, v in network.state_dict().items()},
                          optimizer=self.optimizer.state_dict(), noise_multiplier=self.noise_multiplier,
                          accountant=self.engine.accountant.state_dict() if self.engine else {},
                          rng=rng.get_state(), ema=ema.state_dict() if ema is not None else {},
                          noise_rng=torch.get_rng_state(), rank_rngs=list(rank_rngs))

    def result(self, steps: int, loss: float) -> TrainResult:
        """What the run spent and reached."""
        if self.engine is None:
            return TrainResult(steps, 0.0, 0.0, "", 0.0, loss)
        epsilon, used = self.epsilon()
        return TrainResult(steps, epsilon, self.dp.target_delta, used, self.noise_multiplier, loss)


def make_private(*, module: nn.Module, optimizer: torch.optim.Optimizer, data_loader: torch.utils.data.DataLoader,
                 dp: DPSettings | None, epochs: int, resume: Checkpoint | None,
                 grad_sample_mode: str | None = None, world: World | None = None) -> Private:
    """Opacus's make_private with the noise calibrated for `epochs` epochs of the loader (or taken from `resume`),
    the accountant's and optimizer's state restored from `resume`. The caller loads `resume.model` into its network
    before, since the wrapped module shares its parameters. With a `world` of several processes, `data_loader` is
    the whole dataset's (its batch the global logical batch): each rank gets its share (module docstring)."""
    engine, sigma, accountant = None, 0.0, ""
    distributed = world is not None and world.size > 1
    if dp is not None:
        from opacus import PrivacyEngine

        if resume is not None:
            sigma, accountant = resume.noise_multiplier, dp.accountant
        else:
            sample_rate = poisson_rate(len(data_loader.dataset), data_loader.batch_size)
            sigma, accountant = calibrate_noise(dp, sample_rate, epochs * len(data_loader))
        if distributed:
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

            if not dp.poisson_sampling:
                raise InvalidInput("differential_privacy.poisson_sampling", "training over several processes "
                                                                            "samples batches with Poisson sampling")
            module = DifferentiallyPrivateDistributedDataParallel(module)  # broadcasts rank 0's weights
        engine = PrivacyEngine(accountant=accountant, secure_mode=dp.secure_mode)
        extra = {"grad_sample_mode": grad_sample_mode} if grad_sample_mode else {}
        module, optimizer, data_loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=data_loader, noise_multiplier=sigma,
            max_grad_norm=dp.max_grad_norm, poisson_sampling=dp.poisson_sampling, **extra)
        if distributed:
            data_loader = _every_step(data_loader, world)
            optimizer.reduce_gradients = _one_all_reduce(optimizer)
        if resume is not None and resume.accountant:
            engine.accountant.load_state_dict(resume.accountant)
    elif distributed:
        module = torch.nn.parallel.DistributedDataParallel(module)  # broadcasts rank 0's weights
        data_loader = _sharded(data_loader, world, start_epoch=resume.epoch if resume else 0)
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        if resume.noise_rng is not None:
            torch.set_rng_state(resume.noise_rng)
    return Private(module, optimizer, data_loader, dp, engine, sigma, accountant,
                   resume.epoch if resume else 0, resume.steps if resume else 0)


class EveryStepPoissonSampler(Sampler):
    """Opacus's DistributedUniformWithReplacementSampler (the same shuffle of the dataset into one chunk per rank,
    the same Bernoulli(q) draw of each of the rank's samples, `steps` times an epoch), except that a rank whose draw
    is empty yields its empty batch instead of skipping it: every rank then takes every step together (a skipped
    step would leave the other ranks waiting in the all-reduce), and Opacus handles the empty batch as it does
    with one process. Give each rank its own `generator`: one shared draw would sample the ranks' chunks alike."""

    def __init__(self, *, total_size: int, sample_rate: float, steps: int, world: World,
                 generator: torch.Generator | None, shuffle_seed: int = 0):
        self.total_size, self.sample_rate, self.steps = total_size, sample_rate, steps
        self.world, self.generator, self.shuffle_seed = world, generator, shuffle_seed
        self.num_samples = len(range(world.rank, total_size, world.size))

    def __iter__(self):
        order = torch.randperm(self.total_size, generator=torch.Generator().manual_seed(self.shuffle_seed))
        mine = order[self.world.rank::self.world.size]
        for _ in range(self.steps):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield mine[mask.nonzero(as_tuple=False).reshape(-1)].tolist()

    def __len__(self) -> int:
        return self.steps


def _one_all_reduce(optimizer):
    """Opacus's DistributedDPOptimizer.reduce_gradients (sum every rank's noised gradient, then divide by the
    ranks under mean reduction) in one all-reduce of all the gradients laid end to end, instead of one per
    parameter tensor: a step waits for the other ranks once, not once per tensor (which costs most when the ranks
    share busy cores, or sit on other machines). The sum is the same."""
    params = [p for p in optimizer.params if p.requires_grad]

    def reduce_gradients() -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        if optimizer.loss_reduction == "mean":
            flat /= optimizer.world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
            offset += p.grad.numel()

    return reduce_gradients


def _every_step(loader: DataLoader, world: World) -> DataLoader:
    """Opacus's distributed Poisson loader with its sampler replaced by EveryStepPoissonSampler (same rate, steps,
    generator and collate function, which turns an empty batch into empty tensors)."""
    inner = loader.batch_sampler
    sampler = EveryStepPoissonSampler(total_size=inner.total_size, sample_rate=inner.sample_rate,
                                      steps=inner.num_batches, world=world, generator=inner.generator,
                                      shuffle_seed=inner.shuffle_seed)
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn,
                      generator=loader.generator)


class ShardSampler(Sampler):
    """Plain data parallelism: each epoch one shuffle of the dataset (seeded by `seed` and the epoch, so alike on
    every rank), padded to a multiple of the ranks and dealt out; every rank gets as many samples."""

    def __init__(self, total_size: int, world: World, seed: int, start_epoch: int = 0):
        self.total_size, self.world, self.seed, self.epoch = total_size, world, seed, start_epoch
        self.per_rank = math.ceil(total_size / world.size)

    def __iter__(self):
        order = torch.randperm(self.total_size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        padded = torch.cat([order, order[:self.per_rank * self.world.size - self.total_size]])
        yield from padded[self.world.rank::self.world.size].tolist()

    def __len__(self) -> int:
        return self.per_rank


def _sharded(loader: DataLoader, world: World, start_epoch: int) -> DataLoader:
    """The loader's dataset dealt out to the ranks, each taking its share of the global batch."""
    sampler = ShardSampler(len(loader.dataset), world, torch.initial_seed(), start_epoch)
    return DataLoader(loader.dataset, batch_size=max(1, math.ceil(loader.batch_size / world.size)), sampler=sampler,
                      collate_fn=loader.collate_fn)
