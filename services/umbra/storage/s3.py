"""The S3 backend, through the `minio` client: MinIO in production, any S3 server (the development Ceph
gateway, deploy/s3/rgw.sh) elsewhere.

SHA-256 is recorded as user metadata (`x-amz-meta-sha256`). Objects above `part_size` go up in multipart.
Transient failures (connection refused or reset, 5xx) are retried with exponential backoff by the HTTP pool;
what still fails becomes `Unavailable`, so a caller gets a clear UNAVAILABLE and can retry the whole step.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error, ServerError
from urllib3.util import Retry

from umbra.runtime.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from umbra.storage.base import CHUNK, ObjectInfo, ObjectStore, VerifyingReader

log = logging.getLogger(__name__)
T = TypeVar("T")
SHA_META = "sha256"
_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}


class S3ObjectStore(ObjectStore):
    presigns = True

    def __init__(self, endpoint: str, access_key: str, secret_key: str, *, secure: bool = False,
                 region: str = "us-east-1", retries: int = 4, backoff: float = 0.25,
                 part_size: int = 16 * 1024 * 1024, timeout: float = 30.0):
        self.endpoint = endpoint
        self.part_size = part_size
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout), maxsize=16,
            retries=Retry(total=retries, connect=retries, read=retries, backoff_factor=backoff,
                          status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False),
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                            http_client=http)

    def _call(self, what: str, fn: Callable[[], T], *, name: str = "") -> T:
        try:
            return fn()
        except S3Error as exc:
            if exc.code in _MISSING:
                raise NotFound("object", name or what) from None
            raise FailedPrecondition(f"object storage refused {what}: {exc.code} {exc.message}",
                                     reason="STORAGE_REFUSED") from None
        except (ServerError, urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("object storage at %s failed during %s: %s", self.endpoint, what, exc)
            raise Unavailable(f"object storage at {self.endpoint} is unavailable ({what}); retry later") from None

    def ensure_bucket(self, bucket: str) -> None:
        def make() -> None:
            if not self.client.bucket_exists(bucket):
                try:
                    self.client.make_bucket(bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        self._call("create bucket", make)

    def put(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        sha = hashlib.sha256(data).hexdigest()
        result = self._call("put", lambda: self.client.put_object(
            bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata={SHA_META: sha},
            part_size=self.part_size))
        return ObjectInfo(bucket, key, len(data), sha, result.etag)

    def put_stream(self, bucket: str, key: str, stream: BinaryIO, *, sha256: str = "",
                   content_type: str = "application/octet-stream") -> ObjectInfo:
        # Spool to disk while hashing, so the checksum is known (and checked) before anything is visible.
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            digest, size = hashlib.sha256(), 0
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            actual = digest.hexdigest()
            if sha256 and actual != sha256:
                raise InvalidInput("sha256", f"the bytes received hash to {actual}, not {sha256}")
            spool.seek(0)
            result = self._call("put", lambda: self.client.put_object(
                bucket, key, spool, size, content_type=content_type, metadata={SHA_META: actual},
                part_size=self.part_size))
        return ObjectInfo(bucket, key, size, actual, result.etag)

    def open(self, bucket: str, key: str, *, expected_sha256: str = "") -> VerifyingReader:
        recorded = expected_sha256 or self._recorded(self._stat(bucket, key))
        response = self._call("get", lambda: self.client.get_object(bucket, key), name=f"{bucket}/{key}")
        return VerifyingReader(_Released(response, self, f"{bucket}/{key}"), bucket, key, recorded)

    def _stat(self, bucket: str, key: str):
        return self._call("stat", lambda: self.client.stat_object(bucket, key), name=f"{bucket}/{key}")

    @staticmethod
    def _recorded(stat) -> str:
        metadata = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        return metadata.get(f"x-amz-meta-{SHA_META}", "")

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            stat = self._stat(bucket, key)
        except NotFound:
            return None
        return ObjectInfo(bucket, key, stat.size, self._recorded(stat), stat.etag)

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            objects = list(self._call("list", lambda: list(self.client.list_objects(bucket, prefix=prefix,
                                                                                    recursive=True))))
        except NotFound:
            return
        for obj in objects:
            yield ObjectInfo(bucket, obj.object_name, obj.size, "", obj.etag or "")

    def copy(self, bucket: str, source: str, key: str) -> ObjectInfo:
        # Server-side (objects up to 5 GiB, far above a shard); the user metadata, SHA-256 included, is copied.
        result = self._call("copy", lambda: self.client.copy_object(bucket, key, CopySource(bucket, source)),
                            name=f"{bucket}/{source}")
        info = self.stat(bucket, key)
        return info if info is not None else ObjectInfo(bucket, key, 0, "", result.etag)

    def delete(self, bucket: str, key: str) -> None:
        try:
            self._call("delete", lambda: self.client.remove_object(bucket, key))
        except NotFound:
            pass

    def presign_put(self, bucket: str, key: str, expires_seconds: int) -> str | None:
        return self._call("presign", lambda: self.client.presigned_put_object(
            bucket, key, expires=timedelta(seconds=expires_seconds)))

    def presign_get(self, bucket: str, key: str, expires_seconds: int) -> str | None:
        return self._call("presign", lambda: self.client.presigned_get_object(
            bucket, key, expires=timedelta(seconds=expires_seconds)))


class _Released:
    """A GET response that returns its connection to the pool when closed, and maps read failures."""

    def __init__(self, response, store: S3ObjectStore, name: str):
        self._response = response
        self._store = store
        self._name = name

    def read(self, size: int = -1) -> bytes:
        return self._store._call("read", lambda: self._response.read(None if size is None or size < 0 else size),
                                 name=self._name)

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()
