"""Classifier training on several local processes (data parallel, torch.distributed over gloo on the CPU): one
rank per process, spawned by the worker, meeting at a rendezvous (a TCPStore) that the worker holds on a free
local port. Every rank runs umbra.classifiers.loop.train_rank on its share of each batch; under DP, Opacus's
distributed support adds the noise once (rank 0) and all-reduces the clipped sums, so the run's sample rate, noise
multiplier and steps, and so its epsilon, are the one-process run's (umbra.privacy.dp_sgd). The worker keeps the
operation: rank 0 sends it each epoch's report and checkpoint (which it saves as a one-process run would) and the
final weights; every rank sends its weights' SHA-256 after every epoch and at the end, and ranks whose weights
differ fail the run.

A rank that dies (killed, out of memory) ends the run with Interrupted: the other ranks are stopped, and the run
started again resumes from the last checkpoint, its epsilon counting each step once. Cancellation stops every rank.

    outcome = train(model=model, data=data, inputs=None, hyper=hyper, dp=dp, seed=0, on_epoch=save, resume=None,
                    should_stop=lambda: False, processes=2)     # Outcome(result, digests), rank 0's weights in model
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import queue as queues
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from umbra.classifiers import loop
from umbra.classifiers.data import LabelledImages
from umbra.privacy.dp_sgd import Checkpoint, DPSettings, EpochReport, TrainResult, World
from umbra.runtime.errors import Interrupted, InvalidInput

log = logging.getLogger(__name__)
COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a rank waiting this long in an all-reduce gives up (its peer is gone)
ERROR_GRACE_SECONDS = 3.0  # after a rank's error, how long to look for a dead peer that caused it


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: TrainResult
    digests: tuple[str, ...]  # each rank's final weights' SHA-256, in rank order (all alike)


def threads_per_process(processes: int) -> int:
    """The worker's torch threads shared out: one process with 2 cores uses 2 threads, two use 1 each."""
    return max(1, torch.get_num_threads() // processes)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the weights and buffers, in state_dict order: equal on ranks that hold the same network."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train(*, model: nn.Module, data: LabelledImages, inputs: tuple[torch.Tensor, torch.Tensor] | None,
          hyper: loop.Hyperparameters, dp: DPSettings | None, seed: int,
          on_epoch: Callable[[EpochReport, Checkpoint], None] | None, resume: Checkpoint | None,
          should_stop: Callable[[], bool], processes: int, threads: int | None = None) -> Outcome:
    """Trains `model` in place on `processes` local ranks (see the module docstring)."""
    context = mp.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, processes + 1, is_master=True, wait_for_workers=False,
                          timeout=COLLECTIVE_TIMEOUT)
    messages = context.Queue()
    threads = threads or threads_per_process(processes)
    # Each rank gets a private copy (a shared tensor would be trained by every rank at once) of what it trains: with
    # a fixed stem (computed here already, in `inputs`), the trainable part alone, whose weights the checkpoints and
    # the result then carry, put back into the whole network here.
    shipped = model.trainable() if inputs is not None and getattr(model, "fixed_stem", None) is not None else model
    if resume is not None and shipped is not model:
        model.load_state_dict(resume.model)
        resume = dataclasses.replace(resume, model=shipped.state_dict())
    network = _dumps(shipped)
    resumed = _dumps(dataclasses.asdict(resume)) if resume is not None else b""
    ranks = [context.Process(target=_rank_main, name=f"umbra-train-rank-{rank}", daemon=True, args=(
        rank, processes, store.port, network, data, inputs, hyper, dp, seed, resumed, threads, messages, os.getpid()))
        for rank in range(processes)]
    log.info("training on %d processes (%d torch threads each), rendezvous 127.0.0.1:%d", processes, threads,
             store.port)
    try:
        for process in ranks:
            process.start()
        return _watch(ranks, messages, model, shipped, dp, on_epoch, should_stop)
    finally:
        for process in ranks:
            if process.pid is not None and process.is_alive():
                process.kill()
        for process in ranks:
            if process.pid is not None:
                process.join(timeout=30)
        messages.close()
        del store


def _watch(ranks: list, messages, model: nn.Module, shipped: nn.Module, dp: DPSettings | None,
           on_epoch: Callable[[EpochReport, Checkpoint], None] | None, should_stop: Callable[[], bool]) -> Outcome:
    """Relays rank 0's epochs to `on_epoch` until every rank is done; raises Interrupted when a rank dies. The
    ranks train `shipped` (`model`, or its trainable part): its weights are loaded into `model` as they come."""
    digests: dict[int, dict[int, str]] = {}  # epoch -> rank -> digest
    done: dict[int, str] = {}
    result, last = None, None
    while len(done) < len(ranks):
        if should_stop():
            log.info("training stopped on request: stopping its %d processes", len(ranks))
            return Outcome(_stopped(last, dp), ())
        try:
            message = messages.get(timeout=0.2)
        except queues.Empty:
            _check_alive(ranks, done)
            continue
        kind, rank = message[0], message[1]
        if kind == "epoch":
            _, _, report, checkpoint, digest = message
            _agree(digests.setdefault(report.epoch, {}), rank, digest, len(ranks), f"epoch {report.epoch}")
            if rank == 0:
                last = report
                if on_epoch is not None:
                    saved = Checkpoint(**torch.load(io.BytesIO(checkpoint), weights_only=True))
                    if shipped is not model:
                        shipped.load_state_dict(saved.model)
                        saved.model = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    on_epoch(report, saved)
        elif kind == "done":
            _, _, rank_result, weights, digest = message
            done[rank] = digest
            if rank == 0:
                result = rank_result
                shipped.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        else:
            _raise_for(rank, message[2], ranks)
    _agree(dict(done), 0, done[0], len(ranks), "the end")
    return Outcome(result, tuple(done[r] for r in range(len(ranks))))


def _agree(seen: dict[int, str], rank: int, digest: str, size: int, when: str) -> None:
    """All-reduced updates leave every rank the same weights: anything else is a bug, never a model to keep."""
    seen[rank] = digest
    if len(seen) == size and len(set(seen.values())) > 1:
        raise RuntimeError(f"the training processes' weights differ at {when}: {seen}")


def _check_alive(ranks: list, done: dict[int, str]) -> None:
    for rank, process in enumerate(ranks):
        if process.exitcode is not None and (process.exitcode != 0 or rank not in done):
            raise _lost(rank, process)


def _lost(rank: int, process) -> Interrupted:
    code = process.exitcode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
    log.warning("training process rank %d (pid %s) %s: the run is interrupted", rank, process.pid, how)
    return Interrupted(f"interrupted: training process rank {rank} {how}; retry the request (the same request_id "
                       f"resumes from the last checkpoint, and its epsilon counts each step once)")


def _raise_for(rank: int, error: dict, ranks: list) -> None:
    """A rank's exception, as the worker's: a request error as it is; a failed collective (a peer gone) as
    Interrupted; anything else as an internal error."""
    if error.get("field"):
        raise InvalidInput(error["field"], error["problem"])
    deadline = time.monotonic() + ERROR_GRACE_SECONDS
    while time.monotonic() < deadline:  # a peer's death makes the others' collectives fail: report the death
        for other, process in enumerate(ranks):
            if other != rank and process.exitcode is not None and process.exitcode != 0 and not _reported(process):
                raise _lost(other, process)
        if error["collective"]:
            break
        time.sleep(0.1)
    if error["collective"]:
        raise Interrupted(f"interrupted: training process rank {rank} lost its peers ({error['message']}); retry "
                          f"the request (the same request_id resumes from the last checkpoint)")
    raise RuntimeError(f"training process rank {rank} failed: {error['type']}: {error['message']}")


def _reported(process) -> bool:
    """Whether a rank exited through its own error handler (status 3), rather than being killed."""
    return process.exitcode == 3


def _stopped(last: EpochReport | None, dp: DPSettings | None) -> TrainResult:
    if last is None:
        return TrainResult(0, 0.0, 0.0, "", 0.0, float("nan"))
    return TrainResult(last.steps, last.epsilon, dp.target_delta if dp else 0.0, last.accountant, 0.0, last.loss)


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# -- in each rank's process ---------------------------------------------------------------------------------------

def _rank_main(rank: int, size: int, port: int, network: bytes, data: LabelledImages,
               inputs: tuple[torch.Tensor, torch.Tensor] | None, hyper: loop.Hyperparameters, dp: DPSettings | None,
               seed: int, resumed: bytes, threads: int, messages, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        store = dist.TCPStore("127.0.0.1", port, size + 1, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
        model = torch.load(io.BytesIO(network), weights_only=False)  # the worker's own pickle of its network
        resume = Checkpoint(**torch.load(io.BytesIO(resumed), weights_only=True)) if resumed else None

        def on_epoch(report: EpochReport, checkpoint: Checkpoint) -> None:
            saved = _dumps(dataclasses.asdict(checkpoint)) if rank == 0 else b""
            messages.put(("epoch", rank, report, saved, weights_digest(model)))

        result = loop.train_rank(model=model, data=data, inputs=inputs, hyper=hyper, dp=dp, seed=seed,
                                 on_epoch=on_epoch, resume=resume, world=World(rank, size))
        weights = _dumps(model.state_dict()) if rank == 0 else b""
        messages.put(("done", rank, result, weights, weights_digest(model)))
    except Exception as exc:  # noqa: BLE001 - sent to the worker, which raises it as its own
        log.exception("training process rank %d failed", rank)
        messages.put(("error", rank, {"type": type(exc).__name__, "message": str(exc)[:2000],
                                      "field": getattr(exc, "field", ""), "problem": getattr(exc, "problem", ""),
                                      "collective": isinstance(exc, dist.DistError)}))
        messages.close()
        messages.join_thread()
        os._exit(3)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_when_orphaned(parent: int) -> None:
    """A rank whose worker is gone has no one to report to: it ends (the worker's restart resumes the run)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(4)
