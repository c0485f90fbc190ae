"""A dataset version's life in storage, beside the DatasetService that drives it: the commit's checks and the
manifest that makes a version visible, the streams of chunks in and out, and after a restart the recovery of an
interrupted commit and the sweep of uploads left unfinished."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator

from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.dataset import manifest as mf
from umbra.runtime.errors import InvalidInput
from umbra.services.coordinator import convert
from umbra.services.coordinator.db import CoordinatorDB, VersionRow
from umbra.storage import datasets as stored, keys
from umbra.storage.base import CHUNK, ObjectStore

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 4 * 1024**3


def commit(ctx, db: CoordinatorDB, store: ObjectStore, bucket: str, row: VersionRow,
           drop_invalid: bool) -> ds.DatasetVersion:
    """Checks every shard against the manifest, then writes the final manifest: the moment the version becomes
    visible."""
    ctx.report(stage="checking shards", unit="shards", total=row.shard_count)
    check = stored.check_upload(store, bucket, row.dataset, row.version,
                                progress=lambda done, total: ctx.report(done=done, total=total),
                                cancelled=lambda: ctx.cancelled)
    ctx.check_cancelled()
    for name, reason in check.problems[:1000]:
        ctx.metadata.problems.add(sample=name, reason=reason)
    ctx.save()
    header, kept = stored.publishable(check, drop_invalid)
    size = sum(s.size for s in kept)
    ctx.report(stage="writing manifest")
    manifest = store.put(bucket, keys.manifest(row.dataset, row.version), mf.dumps(header, kept),
                              content_type="application/x-ndjson")  # the version is visible from here
    summary = stored.stats(header, kept, size) | {"manifest_sha256": manifest.sha256}
    db.set_version_state(row.tenant, row.dataset, row.version, "COMMITTED", expect=("COMMITTING",),
                              stats=summary)
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


def recover(db: CoordinatorDB, store: ObjectStore, upload_ttl_seconds: float) -> None:
    """After a restart: a commit that wrote its manifest is committed; any other interrupted commit goes
    back to uploading. Then abandoned uploads are swept."""
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
    sweep(db, store, upload_ttl_seconds)

def sweep(db: CoordinatorDB, store: ObjectStore, upload_ttl_seconds: float, now: float | None = None) -> int:
    """Deletes uploads left unfinished for longer than the TTL: their objects, then their rows."""
    now = time.time() if now is None else now
    swept = 0
    for row in db.versions_in(("UPLOADING", "FAILED")):
        if now - row.create_time >= upload_ttl_seconds:
            store.delete_prefix(keys.bucket(row.tenant), keys.version_prefix(row.dataset, row.version))
            db.delete_version(row.tenant, row.dataset, row.version)
            log.info("swept abandoned upload %s v%d", row.dataset, row.version)
            swept += 1
    return swept

def start_sweeper(db: CoordinatorDB, store: ObjectStore, upload_ttl_seconds: float, stop: threading.Event,
                  interval: float = 3600.0) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(interval):
            try:
                sweep(db, store, upload_ttl_seconds)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("sweep failed")

    thread = threading.Thread(target=loop, name="upload-sweeper", daemon=True)
    thread.start()
    return thread


class ChunkStream:
    """The chunks of an UploadDatasetChunk stream as a file-like object, checking target and offsets."""

    def __init__(self, first, rest: Iterator):
        self._target = (first.dataset_version, first.shard)
        self._pending = [first]
        self._rest = rest
        self._offset = 0
        self._buffer = b""
        self.sha256 = ""

    def _next(self) -> bytes | None:
        message = self._pending.pop() if self._pending else next(self._rest, None)
        if message is None:
            return None
        if (message.dataset_version, message.shard) != self._target:
            raise InvalidInput("shard", "every message of one stream must name the same version and shard")
        if message.offset != self._offset:
            raise InvalidInput("offset", f"expected {self._offset}, got {message.offset}")
        self._offset += len(message.data)
        if self._offset > MAX_UPLOAD_BYTES:
            raise InvalidInput("data", f"an object may be at most {MAX_UPLOAD_BYTES} bytes")
        if message.sha256:
            self.sha256 = message.sha256
        return message.data

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
