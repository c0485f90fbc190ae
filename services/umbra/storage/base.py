"""The object-store interface every backend implements.

Writes record the SHA-256 of the bytes (as object metadata) and reads verify it, so a corrupt or truncated
object is reported, never returned. Objects written by a client through a presigned URL carry no recorded
checksum; whoever accepts them (the dataset commit) checks them against the checksums the client declared.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from umbra.runtime.errors import UmbraError

CHUNK = 1024 * 1024


class ChecksumMismatch(UmbraError):
    """Stored bytes do not match their recorded SHA-256: the object is corrupt."""

    reason = "CHECKSUM_MISMATCH"

    def __init__(self, bucket: str, key: str, expected: str, actual: str):
        super().__init__(f"object {bucket}/{key} is corrupt: sha256 {actual[:12]}… != recorded {expected[:12]}…",
                         metadata={"bucket": bucket, "key": key})


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    sha256: str  # "" when the writer did not record one (presigned uploads)
    etag: str = ""


class VerifyingReader:
    """Wraps a byte stream, hashing what passes through; at the end the hash must match `expected`."""

    def __init__(self, stream: BinaryIO, bucket: str, key: str, expected: str):
        self._stream = stream
        self._hash = hashlib.sha256()
        self._where = (bucket, key)
        self._expected = expected
        self._checked = False

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size) if size is not None and size >= 0 else self._stream.read()
        if data:
            self._hash.update(data)
        elif not self._checked:
            self._checked = True
            actual = self._hash.hexdigest()
            if self._expected and actual != self._expected:
                raise ChecksumMismatch(*self._where, self._expected, actual)
        return data

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "VerifyingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ObjectStore(ABC):
    """Buckets and objects. Keys come from `umbra.storage.keys`, never from a request verbatim."""

    presigns: bool = False  # whether presign_put / presign_get give URLs

    @abstractmethod
    def ensure_bucket(self, bucket: str) -> None: ...

    @abstractmethod
    def put(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Stores bytes atomically (readers see the old object or the new one, never a part)."""

    @abstractmethod
    def put_stream(self, bucket: str, key: str, stream: BinaryIO, *, sha256: str = "",
                   content_type: str = "application/octet-stream") -> ObjectInfo:
        """Stores a stream of unknown length (multipart on S3); `sha256`, when known, is recorded."""

    @abstractmethod
    def open(self, bucket: str, key: str, *, expected_sha256: str = "") -> VerifyingReader:
        """A stream of the object; reading it to the end verifies the recorded (or expected) SHA-256."""

    def get(self, bucket: str, key: str, *, expected_sha256: str = "") -> bytes:
        with self.open(bucket, key, expected_sha256=expected_sha256) as stream:
            chunks = []
            while chunk := stream.read(CHUNK):
                chunks.append(chunk)
        return b"".join(chunks)

    @abstractmethod
    def stat(self, bucket: str, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]: ...

    def copy(self, bucket: str, source: str, key: str) -> ObjectInfo:
        """Copies an object within a bucket, its recorded SHA-256 with it (atomically, like `put`); NotFound when
        the source is missing. Backends with a server-side copy override this."""
        with self.open(bucket, source) as stream:
            return self.put_stream(bucket, key, stream, sha256=self.stat(bucket, source).sha256)

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Deletes one object; deleting a missing one is not an error."""

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        count = 0
        for info in list(self.list(bucket, prefix)):
            self.delete(bucket, info.key)
            count += 1
        return count

    def presign_put(self, bucket: str, key: str, expires_seconds: int) -> str | None:
        return None

    def presign_get(self, bucket: str, key: str, expires_seconds: int) -> str | None:
        return None
