"""The local-directory backend: the zero-setup default. Objects are files under `root/<bucket>/<key>`;
their SHA-256 sits beside them in `root/.meta/<bucket>/<key>.sha256`. Writes go to a temporary file that
is renamed into place, so a reader never sees part of an object. No presigned URLs: bytes stream through
the service instead."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from umbra.runtime.errors import InvalidInput, NotFound
from umbra.storage.base import CHUNK, ObjectInfo, ObjectStore, VerifyingReader


class LocalObjectStore(ObjectStore):
    presigns = False

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, bucket: str, key: str, meta: bool = False) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or bucket.startswith("."):
            raise InvalidInput("key", f"{key!r} is not a valid object key")
        base = self.root / ".meta" / bucket if meta else self.root / bucket
        return base.joinpath(*parts).with_name(parts[-1] + ".sha256") if meta else base.joinpath(*parts)

    def ensure_bucket(self, bucket: str) -> None:
        (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, chunks: Iterator[bytes]) -> tuple[int, str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def _store(self, bucket: str, key: str, chunks: Iterator[bytes]) -> ObjectInfo:
        if not (self.root / bucket).is_dir():
            raise NotFound("bucket", bucket)
        path = self._path(bucket, key)
        size, sha = self._write(path, chunks)
        self._write(self._path(bucket, key, meta=True), iter([sha.encode()]))
        return ObjectInfo(bucket, key, size, sha)

    def put(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        return self._store(bucket, key, iter([data]))

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, *, sha256: str = "",
                   content_type: str = "application/octet-stream") -> ObjectInfo:
        info = self._store(bucket, key, iter(lambda: stream.read(CHUNK), b""))
        if sha256 and info.sha256 != sha256:
            self.delete(bucket, key)
            raise InvalidInput("sha256", f"the bytes received hash to {info.sha256}, not {sha256}")
        return info

    def open(self, bucket: str, key: str, *, expected_sha256: str = "") -> VerifyingReader:
        path = self._path(bucket, key)
        try:
            stream = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound("object", f"{bucket}/{key}") from None
        recorded = self._recorded(bucket, key)
        return VerifyingReader(stream, bucket, key, expected_sha256 or recorded)

    def _recorded(self, bucket: str, key: str) -> str:
        try:
            return self._path(bucket, key, meta=True).read_text().strip()
        except FileNotFoundError:
            return ""

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        path = self._path(bucket, key)
        if not path.is_file():
            return None
        return ObjectInfo(bucket, key, path.stat().st_size, self._recorded(bucket, key))

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / bucket
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(bucket, key, path.stat().st_size, self._recorded(bucket, key))

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)
        self._path(bucket, key, meta=True).unlink(missing_ok=True)
