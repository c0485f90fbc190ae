"""The object-store contract, run against the local backend and a real S3 server."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request

import pytest

from umbra.runtime.errors import InvalidInput, NotFound
from umbra.storage.base import ChecksumMismatch


def test_put_get_stat_list_delete(store, bucket):
    info = store.put(bucket, "datasets/a/v1/x.bin", b"hello")
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest() and info.size == 5
    assert store.get(bucket, "datasets/a/v1/x.bin") == b"hello"
    assert store.stat(bucket, "datasets/a/v1/x.bin").sha256 == info.sha256
    store.put(bucket, "datasets/a/v1/y.bin", b"world")
    store.put(bucket, "datasets/b/v1/z.bin", b"!")
    assert [o.key for o in store.list(bucket, "datasets/a/")] == ["datasets/a/v1/x.bin", "datasets/a/v1/y.bin"]
    assert store.delete_prefix(bucket, "datasets/a/") == 2
    assert store.stat(bucket, "datasets/a/v1/x.bin") is None
    with pytest.raises(NotFound):
        store.get(bucket, "datasets/a/v1/x.bin")
    store.delete(bucket, "datasets/a/v1/x.bin")  # deleting what is gone is fine


def test_large_objects_stream_and_verify(store, bucket):
    data = os.urandom(12 * 1024 * 1024 + 17)  # above the S3 part size used below: multipart
    if hasattr(store, "part_size"):
        store.part_size = 5 * 1024 * 1024
    info = store.put_stream(bucket, "big.bin", io.BytesIO(data), sha256=hashlib.sha256(data).hexdigest())
    assert info.size == len(data)
    with store.open(bucket, "big.bin") as stream:
        received = b"".join(iter(lambda: stream.read(1 << 20), b""))
    assert received == data


def test_put_stream_rejects_a_wrong_checksum_and_stores_nothing(store, bucket):
    with pytest.raises(InvalidInput, match="sha256"):
        store.put_stream(bucket, "bad.bin", io.BytesIO(b"abc"), sha256="0" * 64)
    assert store.stat(bucket, "bad.bin") is None


def test_a_corrupt_object_is_reported_not_returned(store, bucket):
    store.put(bucket, "obj.bin", b"original bytes")
    with pytest.raises(ChecksumMismatch):
        store.get(bucket, "obj.bin", expected_sha256=hashlib.sha256(b"other").hexdigest())
    if hasattr(store, "root"):  # local backend: corrupt the file behind the store's back
        (store.root / bucket / "obj.bin").write_bytes(b"tampered bytes")
        with pytest.raises(ChecksumMismatch):
            store.get(bucket, "obj.bin")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_local_keys_cannot_escape(tmp_path, key):
    from umbra.storage.local import LocalObjectStore

    store = LocalObjectStore(tmp_path / "objects")
    store.ensure_bucket("umbra-acme")
    with pytest.raises(InvalidInput):
        store.put("umbra-acme", key, b"x")


def test_presigned_urls(s3_server):
    store = s3_server.store()
    store.ensure_bucket("umbra-presign")
    put_url = store.presign_put("umbra-presign", "via-url.bin", 300)
    urllib.request.urlopen(urllib.request.Request(put_url, data=b"through a presigned PUT", method="PUT"), timeout=30)
    get_url = store.presign_get("umbra-presign", "via-url.bin", 300)
    assert urllib.request.urlopen(get_url, timeout=30).read() == b"through a presigned PUT"


def test_a_wrong_secret_is_refused(s3_server):
    from umbra.runtime.errors import FailedPrecondition

    bad = type(s3_server)(s3_server.endpoint, s3_server.access_key, "not-the-secret", s3_server.kind).store()
    with pytest.raises(FailedPrecondition, match="refused"):
        bad.ensure_bucket("umbra-refused")


def test_an_unreachable_server_is_unavailable():
    from umbra.runtime.errors import Unavailable
    from umbra.storage.s3 import S3ObjectStore

    store = S3ObjectStore("127.0.0.1:9", "k", "s", retries=1, backoff=0.01)
    with pytest.raises(Unavailable, match="unavailable"):
        store.ensure_bucket("umbra-nowhere")
