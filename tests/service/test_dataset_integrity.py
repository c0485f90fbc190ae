"""What an attacker and bad luck did to dataset versions (issue 15), over real gRPC against a coordinator with the
local object store: a committed version cannot change, deletion leaves nothing behind, a retry after a crash
finishes, and what a client commits is checked (every image decoded, every manifest field typed) before it is
visible. The same guarantees against a real S3 server, presigned URLs included, are in
tests/integration/test_datasets_s3.py."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib

import grpc
import pytest
from PIL import Image

from support import create_tenant, start_coordinator
from uploads import HeldStream, face, shard_of
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.dataset import manifest as mf
from umbra.dataset import synthetic
from umbra.storage import datasets as stored, keys
from umbra.storage.local import LocalObjectStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def coordinator(tmp_path):
    running = start_coordinator(tmp_path / "home")
    target = f"127.0.0.1:{running.port}"
    client = DatasetsClient(open_channel(target, create_tenant(target, "acme")))
    yield running, client, LocalObjectStore(tmp_path / "home" / "objects")
    running.stop(grace=0)


def manifest_of(shard: bytes, samples: list[mf.Sample], **header) -> bytes:
    fields = dict(image_size=32, label_columns=sorted({c for s in samples for c in s.labels}), attribute_columns=[],
                  shards=["shard-000000.tar"], samples=len(samples),
                  shard_sha256={"shard-000000.tar": hashlib.sha256(shard).hexdigest()}) | header
    return mf.dumps(mf.Header(**fields), samples)


def new_version(client: DatasetsClient, dataset: str) -> ds.CreateDatasetVersionResponse:
    client.ensure(dataset)
    return client.stub.CreateDatasetVersion(ds.CreateDatasetVersionRequest(parent=f"datasets/{dataset}",
                                                                           shard_count=1), timeout=10)


def upload(client: DatasetsClient, created, shard: bytes, manifest: bytes) -> str:
    version = created.dataset_version.name
    client._put(version, created.shard_targets[0], shard)
    client._put(version, created.manifest_target, manifest)
    return version


def commit(client: DatasetsClient, version: str, *, drop_invalid: bool = False, request_id: str = ""):
    op = client.stub.CommitDatasetVersion(ds.CommitDatasetVersionRequest(
        name=version, drop_invalid=drop_invalid, request_id=request_id), timeout=10).operation
    return client.operations.result(op.name, ds.DatasetVersion, timeout=60)


def exported_bytes(client: DatasetsClient, version: str) -> dict[str, bytes]:
    _, images = client.read(version)
    return {sample.key: data for sample, data in images}


# -- class 2: a committed version cannot change ---------------------------------------------------------------------

def test_a_stream_finished_after_the_commit_changes_nothing(coordinator):
    _, client, store = coordinator
    shard, samples = shard_of({"a": face(1), "b": face(2)})
    created = new_version(client, "late")
    version = upload(client, created, shard, manifest_of(shard, samples))
    evil, _ = shard_of({"a": face(3), "b": face(4)})
    late = HeldStream(client, version, evil)  # opened before the commit
    wrong_hash = HeldStream(client, version, evil, sha256="0" * 64)
    committed = commit(client, version)
    before = exported_bytes(client, version)
    error = late.finish()
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    error = wrong_hash.finish()  # refused for its state, or for its hash: either way it deletes nothing
    assert error is not None and error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
    # A presigned PUT cannot be revoked: one that lands after the commit lands in the staging area only.
    store.put("umbra-acme", keys.upload_shard("late", 1, "shard-000000.tar"), evil)
    assert exported_bytes(client, version) == before == {"a": face(1), "b": face(2)}
    again = client.stub.GetDatasetVersion(ds.GetDatasetVersionRequest(name=version), timeout=10).dataset_version
    assert again.manifest.sha256 == committed.manifest.sha256


# -- class 3: deletion waits for or stops writers, and leaves nothing behind ----------------------------------------

def test_a_stream_open_during_deletion_leaves_nothing(coordinator, tmp_path):
    _, client, _ = coordinator
    shard, _ = shard_of({"a": face(1)})
    created = new_version(client, "doomed")
    stream = HeldStream(client, created.dataset_version.name, shard)
    client.stub.DeleteDataset(ds.DeleteDatasetRequest(name="datasets/doomed"), timeout=10)
    error = stream.finish()
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND
    assert not list((tmp_path / "home" / "objects" / "umbra-acme").rglob("*.tar"))


def test_deleting_during_a_commit_stops_the_commit_cleanly(coordinator, tmp_path, monkeypatch):
    _, client, _ = coordinator
    shard, samples = shard_of({"a": face(1)})
    version = upload(client, new_version(client, "racing"), shard, manifest_of(shard, samples))
    copying, release = threading.Event(), threading.Event()
    original = LocalObjectStore.copy

    def slow_copy(self, *args, **kwargs):
        copying.set()
        release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LocalObjectStore, "copy", slow_copy)
    op = client.stub.CommitDatasetVersion(ds.CommitDatasetVersionRequest(name=version), timeout=10).operation
    assert copying.wait(10)
    deleting = threading.Thread(target=lambda: client.stub.DeleteDataset(
        ds.DeleteDatasetRequest(name="datasets/racing"), timeout=30))
    deleting.start()  # waits for the copy under way to land, then deletes
    release.set()
    deleting.join(30)
    with pytest.raises(OperationFailed) as err:
        client.operations.result(op.name, ds.DatasetVersion, timeout=30)
    assert code(err.value) in ("NOT_FOUND", "FAILED_PRECONDITION"), err.value  # never INTERNAL
    assert not [p for p in (tmp_path / "home" / "objects" / "umbra-acme").rglob("*") if p.is_file()]


def test_the_sweep_removes_what_late_writers_leave(coordinator, tmp_path):
    running, client, store = coordinator
    shard, samples = shard_of({"a": face(1)})
    version = upload(client, new_version(client, "kept"), shard, manifest_of(shard, samples))
    commit(client, version)
    store.put("umbra-acme", keys.upload_shard("kept", 1, "shard-000000.tar"), b"late presigned PUT")
    store.put("umbra-acme", keys.upload_shard("gone", 4, "shard-000000.tar"), b"a worker writing after deletion")
    running.stop(grace=0)
    restarted = start_coordinator(tmp_path / "home")  # the sweep runs at start (and every hour)
    try:
        assert store.stat("umbra-acme", keys.upload_shard("kept", 1, "shard-000000.tar")) is None
        assert store.stat("umbra-acme", keys.upload_shard("gone", 4, "shard-000000.tar")) is None
        assert store.stat("umbra-acme", keys.shard("kept", 1, "shard-000000.tar")) is not None
    finally:
        restarted.stop(grace=0)


# -- class 4: a retry after a crash finishes --------------------------------------------------------------------------

def test_the_same_upload_finishes_after_a_restart_interrupted_its_commit(tmp_path, monkeypatch):
    home = tmp_path / "home"
    faces = synthetic.write_folder(tmp_path / "faces", 12, size=32, seed=3)
    running = start_coordinator(home)
    target = f"127.0.0.1:{running.port}"
    key = create_tenant(target, "acme")
    copying = threading.Event()
    original = LocalObjectStore.copy

    def stuck_copy(self, *args, **kwargs):
        copying.set()
        threading.Event().wait(5)  # the coordinator stops meanwhile
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LocalObjectStore, "copy", stuck_copy)
    uploading = threading.Thread(target=lambda: _ignore(lambda: DatasetsClient(open_channel(target, key)).upload(
        faces, "faces", progress=False)))
    uploading.start()
    assert copying.wait(30)  # CommitDatasetVersion has returned; its operation is copying shards
    running.stop(grace=0)
    uploading.join(30)
    monkeypatch.setattr(LocalObjectStore, "copy", original)
    running = start_coordinator(home, UMBRA_COORDINATOR_PORT=str(running.port))
    try:
        version = DatasetsClient(open_channel(target, key)).upload(faces, "faces", progress=False)  # the same
        assert version.state == ds.DatasetVersion.STATE_COMMITTED and version.sample_count == 12
    finally:
        running.stop(grace=0)


def _ignore(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the coordinator went away under this upload, as intended
        pass


# -- class 6: the server checks what the client committed -------------------------------------------------------------

def _bomb_png(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels, with tiny compressed data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (side * 3 + 1) * 64, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _with_text_chunk(png: bytes) -> bytes:
    image = Image.open(io.BytesIO(png))
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "patient 4711")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def test_the_commit_decodes_every_image(coordinator):
    _, client, _ = coordinator
    bad = {"text": b"this is not a picture", "bomb": _bomb_png(13000), "big": synthetic_png_of_size(64),
           "meta": _with_text_chunk(face(6)), "tail": face(7) + b"secret after IEND"}
    shard, samples = shard_of({"good": face(1), **bad})
    version = upload(client, new_version(client, "checked"), shard, manifest_of(shard, samples))
    with pytest.raises(OperationFailed) as err:
        commit(client, version)
    assert code(err.value) == "INVALID_ARGUMENT"
    metadata = ds.CommitDatasetVersionMetadata()
    assert client.operations.get(err.value.name).metadata.Unpack(metadata)
    problems = {p.sample: p.reason for p in metadata.problems}
    assert set(problems) == set(bad), problems
    assert "not an image" in problems["text"] and "13000x13000" in problems["bomb"]
    assert "64x64" in problems["big"] and "metadata" in problems["meta"] and "after" in problems["tail"]
    kept = commit(client, version, drop_invalid=True, request_id="drop")
    assert kept.sample_count == 1 and set(exported_bytes(client, version)) == {"good"}


def synthetic_png_of_size(size: int) -> bytes:
    return next(synthetic.generate(1, size=size, seed=9)).png


def code(error: OperationFailed) -> str:
    return next(s.name for s in grpc.StatusCode if s.value[0] == error.code)


@pytest.mark.parametrize("line, field", [
    ('{"key": "a", "shard": "shard-000000.tar", "split": "train", "sha256": "%s", "size": 10, '
     '"labels": {"gender": {"nested": 1}}}', "labels"),
    ('{"key": "a", "shard": "shard-000000.tar", "split": "train", "sha256": "%s", "size": "10"}', "size"),
    ('{"key": "a\\n", "shard": "shard-000000.tar", "split": "train", "sha256": "%s", "size": 10}', "key"),
    ('{"key": "a", "shard": "shard-000000.tar", "split": "train", "sha256": "%s", "size": 10, "extra": 1}', "extra"),
    ('["not", "an", "object"]', "object"),
])
def test_manifest_fields_are_type_checked(coordinator, line, field):
    _, client, _ = coordinator
    shard, samples = shard_of({"a": face(1)})
    header = manifest_of(shard, samples).split(b"\n")[0]
    manifest = header + b"\n" + (line.replace("%s", "0" * 64) if "%s" in line else line).encode() + b"\n"
    version = upload(client, new_version(client, "typed"), shard, manifest)
    with pytest.raises(OperationFailed) as err:
        commit(client, version)
    assert code(err.value) == "INVALID_ARGUMENT" and field in str(err.value) and "line 2" in str(err.value)


def test_an_oversized_manifest_is_refused_while_it_streams(coordinator, monkeypatch):
    _, client, _ = coordinator
    monkeypatch.setattr(stored, "MAX_MANIFEST_BYTES", 4096)
    created = new_version(client, "huge")
    with pytest.raises(UmbraRpcError) as err:
        client._put(created.dataset_version.name, created.manifest_target, b"x" * 10_000)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.field == "data"
