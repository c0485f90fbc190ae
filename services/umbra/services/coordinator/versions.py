"""A dataset version's life in storage, beside the DatasetService that drives it: the commit (snapshot the staged
shards, check them, write the manifest that makes the version visible), the streams of chunks in and out, and
after a restart the recovery of an interrupted commit and the sweep of what uploads left behind.

Every write into a dataset's objects lands under `DatasetLocks.shared` after checking the version's state, and
every change of that state holds the lock exclusively (umbra.services.coordinator.locks): once a commit has begun,
no upload lands in the version, and once a dataset is deleted, nothing lands in it at all.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.dataset import manifest as mf
from umbra.runtime.errors import FailedPrecondition, InvalidInput, NotFound
from umbra.services.coordinator import convert
from umbra.services.coordinator.db import CoordinatorDB, VersionRow
from umbra.services.coordinator.locks import DatasetLocks
from umbra.storage import datasets as stored, keys
from umbra.storage.base import CHUNK, ObjectStore

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 4 * 1024**3  # one shard
OPEN_FOR_UPLOAD = ("UPLOADING", "FAILED")


def require_state(db: CoordinatorDB, row: VersionRow, states: tuple[str, ...]) -> VersionRow:
    """The version as it is now, if it is in one of `states` (call it holding the dataset's lock); NotFound when
    the version (or its dataset) was deleted, FailedPrecondition when it moved on."""
    now = db.version(row.tenant, row.dataset, row.version)
    if now is None:
        raise NotFound("dataset version", f"datasets/{row.dataset}/versions/{row.version}")
    if now.state not in states:
        what = "uploads are closed" if "UPLOADING" in states else "the commit stopped"
        raise FailedPrecondition(f"version {row.version} is {now.state.lower()}; {what}",
                                 reason="VERSION_NOT_UPLOADING" if "UPLOADING" in states else "VERSION_NOT_COMMITTING")
    return now


def commit(ctx, db: CoordinatorDB, store: ObjectStore, locks: DatasetLocks, bucket: str, row: VersionRow,
           drop_invalid: bool) -> ds.DatasetVersion:
    """Copies every staged shard to where the version keeps it (a snapshot: a write that lands in the staging area
    later changes nothing), checks the copies against the manifest, then writes the final manifest: the moment the
    version becomes visible. Each write checks, under the dataset's lock, that the version is still committing."""
    header, samples = stored.read_upload_manifest(store, bucket, row.dataset, row.version)
    ctx.report(stage="copying shards", unit="shards", done=0, total=len(header.shards))
    for done, shard in enumerate(header.shards, start=1):
        ctx.check_cancelled()
        with locks.shared(row.tenant, row.dataset):
            require_state(db, row, ("COMMITTING",))
            try:
                store.copy(bucket, keys.upload_shard(row.dataset, row.version, shard),
                           keys.shard(row.dataset, row.version, shard))
            except NotFound:
                store.delete(bucket, keys.shard(row.dataset, row.version, shard))  # from an earlier attempt
        ctx.report(done=done)
    ctx.report(stage="checking shards", unit="shards", done=0, total=len(header.shards))
    check = stored.check_shards(store, bucket, row.dataset, row.version, header, samples,
                                progress=lambda done, total: ctx.report(done=done, total=total),
                                cancelled=lambda: ctx.cancelled)
    ctx.check_cancelled()
    require_state(db, row, ("COMMITTING",))  # deleted meanwhile: say so, not what deletion did to the shards
    for name, reason in check.problems[:1000]:
        ctx.metadata.problems.add(sample=name, reason=reason)
    ctx.save()
    header, kept = stored.publishable(check, drop_invalid)
    size = sum(s.size for s in kept)
    ctx.report(stage="writing manifest")
    with locks.shared(row.tenant, row.dataset):
        require_state(db, row, ("COMMITTING",))
        manifest = store.put(bucket, keys.manifest(row.dataset, row.version), mf.dumps(header, kept),
                             content_type="application/x-ndjson")  # the version is visible from here
        summary = stored.stats(header, kept, size) | {"manifest_sha256": manifest.sha256}
        db.set_version_state(row.tenant, row.dataset, row.version, "COMMITTED", expect=("COMMITTING",),
                             stats=summary)
    store.delete_prefix(bucket, keys.upload_prefix(row.dataset, row.version))  # staged copies: not needed any more
    log.info("dataset %s v%d committed: %d samples, %d dropped", row.dataset, row.version, len(kept),
             len(check.samples) - len(kept))
    return convert.version_to_proto(db.version(row.tenant, row.dataset, row.version), bucket)


def download(store: ObjectStore, bucket: str, key: str) -> Iterator[ds.DownloadDatasetChunkResponse]:
    """An object as DownloadDatasetChunk messages, the last carrying the SHA-256 of the whole."""
    digest, offset = hashlib.sha256(), 0
    with store.open(bucket, key) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            yield ds.DownloadDatasetChunkResponse(offset=offset, data=chunk)
            offset += len(chunk)
    yield ds.DownloadDatasetChunkResponse(offset=offset, sha256=digest.hexdigest())


def recover(db: CoordinatorDB, store: ObjectStore, locks: DatasetLocks, upload_ttl_seconds: float) -> None:
    """After a restart: a commit that wrote its manifest is committed; any other interrupted commit goes
    back to uploading (retrying the commit, even with the same request_id, starts it again). Then what uploads
    left behind is swept."""
    for row in db.versions_in(("COMMITTING",)):
        bucket = keys.bucket(row.tenant)
        if store.stat(bucket, keys.manifest(row.dataset, row.version)) is not None:
            reader = stored.DatasetReader(store, bucket, row.dataset, row.version)
            samples = list(reader.samples())
            summary = stored.stats(reader.header, samples, sum(s.size for s in samples))
            db.set_version_state(row.tenant, row.dataset, row.version, "COMMITTED", expect=("COMMITTING",),
                                 stats=summary)
        else:
            db.set_version_state(row.tenant, row.dataset, row.version, "UPLOADING", expect=("COMMITTING",),
                                 error="the commit was interrupted by a restart; commit again")
    with locks.only_one("sweep") as mine:
        if mine:
            sweep(db, store, locks, upload_ttl_seconds)


def sweep(db: CoordinatorDB, store: ObjectStore, locks: DatasetLocks, upload_ttl_seconds: float,
          now: float | None = None) -> int:
    """Deletes uploads left unfinished for longer than the TTL (their objects, then their rows), and objects that
    no version owns any more: those of deleted datasets and versions, and staged uploads of committed versions
    (a presigned PUT or a worker may write after the commit or the deletion; nothing reads those). Returns the
    number of versions and objects removed."""
    now = time.time() if now is None else now
    swept = 0
    for row in db.versions_in(OPEN_FOR_UPLOAD):
        if now - row.create_time >= upload_ttl_seconds:
            with locks.exclusive(row.tenant, row.dataset):
                store.delete_prefix(keys.bucket(row.tenant), keys.version_prefix(row.dataset, row.version))
                db.delete_version(row.tenant, row.dataset, row.version)
            log.info("swept abandoned upload %s v%d", row.dataset, row.version)
            swept += 1
    for tenant in db.tenant_ids():
        bucket = keys.bucket(tenant)
        for info in list(store.list(bucket, "datasets/")):
            parsed = keys.parse_version_key(info.key)
            if parsed is None:
                continue
            dataset, version, rest = parsed
            with locks.exclusive(tenant, dataset):
                row = db.version(tenant, dataset, version)
                if row is None or (row.state == "COMMITTED" and rest.startswith("upload/")):
                    store.delete(bucket, info.key)
                    swept += 1
    return swept


def start_sweeper(db: CoordinatorDB, store: ObjectStore, locks: DatasetLocks, upload_ttl_seconds: float,
                  stop: threading.Event, interval: float = 3600.0) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(interval):
            try:
                with locks.only_one("sweep") as mine:  # one replica at a time; the others skip this round
                    if mine:
                        sweep(db, store, locks, upload_ttl_seconds)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("sweep failed")

    thread = threading.Thread(target=loop, name="upload-sweeper", daemon=True)
    thread.start()
    return thread


class ChunkStream:
    """The chunks of an UploadDatasetChunk stream as a file-like object, checking target and offsets as they
    arrive and the size against `max_bytes`. When the last chunk has arrived, the SHA-256 the last message
    declares is checked and `land()` is called, before the reader sees the end: a store writes the object only
    after that, so bytes that do not match are never stored, and `land` can take the lock and check the state
    under which the write lands."""

    def __init__(self, first, rest: Iterator, *, max_bytes: int = MAX_UPLOAD_BYTES,
                 land: Callable[[], None] = lambda: None):
        self._target = (first.dataset_version, first.shard)
        self._pending = [first]
        self._rest = rest
        self._offset = 0
        self._buffer = b""
        self._max_bytes = max_bytes
        self._land = land
        self._digest = hashlib.sha256()
        self._ended = False
        self.sha256 = ""

    def _next(self) -> bytes | None:
        if self._ended:
            return None
        message = self._pending.pop() if self._pending else next(self._rest, None)
        if message is None:
            self._end()
            return None
        if (message.dataset_version, message.shard) != self._target:
            raise InvalidInput("shard", "every message of one stream must name the same version and shard")
        if message.offset != self._offset:
            raise InvalidInput("offset", f"expected {self._offset}, got {message.offset}")
        self._offset += len(message.data)
        if self._offset > self._max_bytes:
            raise InvalidInput("data", f"this object may be at most {self._max_bytes} bytes")
        self._digest.update(message.data)
        if message.sha256:
            self.sha256 = message.sha256
        return message.data

    def _end(self) -> None:
        self._ended = True
        if not self.sha256:
            raise InvalidInput("sha256", "the last message must carry the SHA-256 of the whole object")
        if self.sha256 != self._digest.hexdigest():
            raise InvalidInput("sha256", f"the bytes received hash to {self._digest.hexdigest()}, not {self.sha256}")
        self._land()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            data = self._next()
            if data is None:
                break
            self._buffer += data
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out
