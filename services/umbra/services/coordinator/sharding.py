"""Anonymizing one dataset version across several anonymizer replicas (on Kubernetes, the pods behind the
anonymizer's headless service), with the same bytes as one replica writing it alone.

    result = anonymize_sharded(["10.0.0.7:50052", "10.0.0.8:50052"], service_token, "acme", request, store=store)

The output shards are counted from the source manifest (`umbra.anonymization.shards.shard_count`, the rule the
anonymizer plans with) and dealt round-robin to the replicas: each gets one `AnonymizeDataset` with its `shards`,
which writes those shards only (their bytes do not depend on the replica). A replica that cannot be reached or
whose operation fails (killed, stopped, restarted mid-dataset) leaves the job, and its shards are dealt to the
others at once; a shard it finished is skipped by whoever gets it. When every shard is written, one call without
`shards` finishes the version: it reuses every shard and writes the private record and the upload manifest (and
commits the privacy charge that all these calls share). The caller then commits the version, as for one replica.

Every call's request_id is derived from the job's (`request.request_id`, or the request itself) and the replica
and attempt, so running the same job again (a coordinator restarted mid-way) finds the same operations.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import grpc
from umbra.anonymization.shards import shard_count

from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client import protos
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.operations import OperationsClient, call
from umbra.runtime.errors import Cancelled
from umbra.runtime.operations.runner import interrupted
from umbra.services.references import dataset_reader
from umbra.storage import keys
from umbra.storage.base import ObjectStore

log = logging.getLogger(__name__)

TIMEOUT = 60.0  # one RPC (starting an operation plans the request and reserves its privacy charge)
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
INTERRUPTED_RETRIES = 3  # an operation that ends interrupted is started again this many times at most
CANCEL_WAIT_SECONDS = 60.0  # how long a cancelled worker operation is waited for (it stops at its next check)


def derived_request_id(base: str, *parts: object) -> str:
    """A UUID for one call of the job: the same every time the job reaches the same call."""
    return str(uuid.UUID(hashlib.sha256("\0".join(map(str, (base, *parts))).encode()).hexdigest()[:32]))


def deal(shards: list[int], replicas: list[int]) -> dict[int, list[int]]:
    """Shards dealt round-robin to the replicas (a replica left without shards is left out)."""
    dealt: dict[int, list[int]] = {}
    for i, shard in enumerate(shards):
        dealt.setdefault(replicas[i % len(replicas)], []).append(shard)
    return dealt


@dataclass(frozen=True)
class _Attempt:
    replica: int
    shards: tuple[int, ...]
    request_id: str


@dataclass
class _Outcome:
    result: an.AnonymizationResult | None = None
    error: Exception | None = None  # OperationFailed, or UmbraRpcError when the replica cannot be reached
    refused: bool = False  # the request itself was refused: every replica would refuse it


class _Replicas:
    def __init__(self, targets: list[str], service_token: str, tenant: str, poll_seconds: float,
                 cancelled: Callable[[], bool] = lambda: False, cancel_workers: Callable[[], bool] = lambda: True,
                 patience: Callable[[], float] = lambda: 0.0):
        self.targets, self.poll_seconds, self.cancelled, self.patience = targets, poll_seconds, cancelled, patience
        self.cancel_workers = cancel_workers
        self._channels = [open_channel(t, service_token, tenant=tenant) for t in targets]
        self.shards_done: dict[str, int] = {}  # the latest shards_done of each operation running
        self.stop = threading.Event()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def run(self, replica: int, request: an.AnonymizeDatasetRequest) -> _Outcome:
        """Starts the request on the replica and waits for its operation. An operation that ends interrupted
        (its replica stopped, or the ledger could not take its commit) is started again, a few times: the same
        request_id starts it anew, and it finds what it wrote. A replica that cannot be reached is waited for,
        up to `patience()` seconds (0 while other replicas can take its shards; the wait when it is the last)."""
        outcome, interruptions, unreachable_since = _Outcome(), 0, None
        while True:
            outcome, again = self._run_once(replica, request)
            if again and interruptions < INTERRUPTED_RETRIES:
                interruptions += 1
                continue
            unreachable = isinstance(outcome.error, UmbraRpcError) and outcome.error.code in UNREACHABLE
            if not unreachable or self.stop.is_set() or self.cancelled():
                return outcome
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since >= self.patience():
                if self.patience() > 0:
                    outcome.error.message += f" (waited {self.patience():g} s for it: UMBRA_WORKER_WAIT_SECONDS)"
                return outcome
            log.warning("anonymizer replica %s cannot be reached: waiting for it", self.targets[replica])
            time.sleep(self.poll_seconds)

    def _run_once(self, replica: int, request: an.AnonymizeDatasetRequest) -> tuple[_Outcome, bool]:
        """(the outcome, whether it was interrupted and may be started again)."""
        channel = self._channels[replica]
        try:
            op = call(anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel).AnonymizeDataset, request,
                      timeout=TIMEOUT).operation
        except UmbraRpcError as exc:
            return _Outcome(error=exc, refused=not _unusable(exc)), False
        operations = OperationsClient(channel, TIMEOUT)
        try:
            while not op.done:
                if self.cancelled():  # the caller's job was cancelled: its workers' operations are cancelled too
                    if self.cancel_workers():  # (not when the caller is only stopping: it will carry on later)
                        cancel_and_wait(operations, op.name)
                    return _Outcome(error=Cancelled("cancelled by request"), refused=True), False
                if self.stop.is_set():
                    return _Outcome(error=RuntimeError("stopped")), False
                op = operations.wait(op.name, timeout=self.poll_seconds, poll_seconds=self.poll_seconds)
                metadata = protos.unpack(op.metadata)
                if metadata is not None:
                    self.shards_done[request.request_id] = getattr(metadata, "shards_done", 0)
        except UmbraRpcError as exc:
            return _Outcome(error=exc), False
        if op.HasField("error"):
            return _Outcome(error=OperationFailed(op.name, op.error.code, op.error.message)), interrupted(op)
        result = an.AnonymizationResult()
        op.response.Unpack(result)
        return _Outcome(result=result), False


def cancel_and_wait(operations: OperationsClient, name: str, timeout: float = CANCEL_WAIT_SECONDS) -> None:
    """Cancels a worker's operation and waits (up to `timeout`) until it has ended, so that nothing it writes comes
    after what the caller does next (deleting the version it was writing)."""
    try:
        operations.cancel(name)
        operations.wait(name, timeout=timeout, poll_seconds=0.5)
    except UmbraRpcError:  # gone or unreachable: the sweep removes what it may still write
        pass


def _unusable(exc: UmbraRpcError) -> bool:
    """Whether a refused start says something about the replica (gone, stopping), not about the request."""
    return exc.code in UNREACHABLE or exc.reason == "SHUTTING_DOWN"


def anonymize_sharded(targets: list[str], service_token: str, tenant: str, request: an.AnonymizeDatasetRequest, *,
                      store: ObjectStore, progress: Callable[[int, int], None] | None = None,
                      poll_seconds: float = 1.0, cancelled: Callable[[], bool] = lambda: False,
                      cancel_workers: Callable[[], bool] = lambda: True,
                      wait_seconds: float = 0.0) -> an.AnonymizationResult:
    """Runs `request` (whose `shards` must be empty) across the anonymizer replicas at `targets` and returns the
    finishing call's result: the whole version, as one replica's would be. `store` is the tenant's object store,
    to count the shards from the source manifest. progress(shards_done, shards_total) while it runs.

    Raises UmbraRpcError when the request is refused (by field, budget, version in use: every replica would
    refuse it) or no replica can be reached, OperationFailed when the work failed on every replica left, and
    Cancelled once `cancelled()` says so, after cancelling the replicas' operations when `cancel_workers()` says
    so too (a caller that is only stopping leaves them to finish, and finds them again when it carries on).
    A replica that cannot be reached while it is the last one left is waited for, up to `wait_seconds` (it may be
    restarting); while others are left, its shards go to them at once."""
    if not targets:
        raise ValueError("no anonymizer address")
    if request.shards:
        raise ValueError("the job's request names no shards: anonymize_sharded deals them")
    base = request.request_id or "sha256:" + hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    settings = request.settings
    reader = dataset_reader(store, keys.bucket(tenant), request.dataset, "dataset")
    total = shard_count(reader.samples(), [*settings.protected_attributes, *settings.kept_attributes])
    healthy = list(range(len(targets)))
    replicas = _Replicas(list(targets), service_token, tenant, poll_seconds, cancelled, cancel_workers,
                         patience=lambda: wait_seconds if len(healthy) <= 1 else 0.0)
    try:
        if total > 1 and len(targets) > 1:
            healthy[:] = _write_shards(replicas, request, base, total, progress, healthy)
        return _finish(replicas, request, base, healthy)
    finally:
        replicas.stop.set()
        replicas.close()


def _write_shards(replicas: _Replicas, request: an.AnonymizeDatasetRequest, base: str, total: int,
                  progress: Callable[[int, int], None] | None, healthy: list[int]) -> list[int]:
    """Every shard written by some replica; returns the replicas still usable (`healthy`, updated in place, so
    that a replica's patience knows whether it is the last)."""
    attempts = {replica: 0 for replica in healthy}
    written: set[int] = set()
    with ThreadPoolExecutor(max_workers=2 * len(healthy), thread_name_prefix="anonymize-shards") as pool:
        running: dict[Future, _Attempt] = {}

        def start(replica: int, shards: list[int]) -> None:
            attempt = _Attempt(replica, tuple(shards), derived_request_id(base, "shards", replica, attempts[replica]))
            attempts[replica] += 1
            part = an.AnonymizeDatasetRequest()
            part.CopyFrom(request)
            part.shards[:] = shards
            part.request_id = attempt.request_id
            # in a copy of this thread's context: the calls carry the job's trace and its log fields
            running[pool.submit(contextvars.copy_context().run, replicas.run, replica, part)] = attempt

        for replica, shards in deal(list(range(total)), healthy).items():
            start(replica, shards)
        while running:
            finished, _ = wait(running, timeout=replicas.poll_seconds, return_when=FIRST_COMPLETED)
            for future in finished:
                attempt, outcome = running.pop(future), future.result()
                replicas.shards_done.pop(attempt.request_id, None)
                if outcome.result is not None:
                    written.update(attempt.shards)
                    continue
                if outcome.refused:
                    replicas.stop.set()
                    raise outcome.error
                if attempt.replica in healthy:
                    healthy.remove(attempt.replica)
                if not healthy:
                    replicas.stop.set()
                    raise outcome.error
                for replica, shards in deal(list(attempt.shards), healthy).items():
                    start(replica, shards)  # a shard the failed replica finished is skipped by its new replica
            if progress is not None:
                progress(min(len(written) + sum(replicas.shards_done.values()), total), total)
    return healthy


def _finish(replicas: _Replicas, request: an.AnonymizeDatasetRequest, base: str,
            healthy: list[int]) -> an.AnonymizationResult:
    """The call without shards: every shard is written, so it only writes the record and the upload manifest."""
    final = an.AnonymizeDatasetRequest()
    final.CopyFrom(request)
    final.request_id = derived_request_id(base, "finish")
    outcome = _Outcome(error=RuntimeError("no replica"))
    for replica in healthy:  # the next replica when one fails (it may have been stopped, or be unreachable)
        outcome = replicas.run(replica, final)
        if outcome.result is not None:
            return outcome.result
        if outcome.refused:
            break
    raise outcome.error
