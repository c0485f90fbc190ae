"""Uploading a folder of images as a dataset version, and exporting a version back to a folder.

Bytes go straight between this machine and object storage through presigned URLs when the store has them,
or stream through the coordinator in 1 MiB chunks when it does not; never a whole dataset in one message.
The upload's request ids come from the content, so running the same upload again after a failure (object
storage down, a lost connection) continues the same version instead of making a second one.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from umbra.client.errors import UmbraRpcError
from umbra.client.operations import OperationsClient, call
from umbra.client.progress import Progress
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.dataset import ingest, manifest as mf
from umbra.dataset.images import SizePolicy
from umbra.dataset.shards import DEFAULT_SHARD_BYTES, ShardWriter, iter_shard

CHUNK = 1024 * 1024


@dataclass
class IngestRejected(Exception):
    """The folder has problems; nothing was uploaded. Each problem names the file and the reason."""

    problems: list[ingest.Problem]

    def __str__(self) -> str:
        lines = [f"  {p.name}: {p.reason}" for p in self.problems[:50]]
        more = [f"  … and {len(self.problems) - 50} more"] if len(self.problems) > 50 else []
        return "\n".join([f"{len(self.problems)} problems, nothing uploaded (--drop-invalid leaves these out):",
                          *lines, *more])


def _request_id(*parts: str) -> str:
    return str(uuid.UUID(hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]))


def _unavailable(what: str, exc: Exception) -> UmbraRpcError:
    return UmbraRpcError(grpc.StatusCode.UNAVAILABLE, f"object storage is unavailable ({what}): {exc}; "
                         "run the same upload again once it is back", reason="STORAGE_UNAVAILABLE")


def _http(method: str, url: str, data: bytes | None = None, attempts: int = 4) -> bytes:
    for attempt in range(attempts):
        try:
            request = urllib.request.Request(url, data=data, method=method)
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts - 1:
                raise UmbraRpcError(grpc.StatusCode.FAILED_PRECONDITION, f"object storage answered {exc.code} to "
                                    f"{method}", reason="STORAGE_REFUSED") from None
        except (urllib.error.URLError, OSError) as exc:
            if attempt == attempts - 1:
                raise _unavailable(method, exc) from None
        time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


class DatasetsClient:
    def __init__(self, channel: grpc.Channel, timeout: float = 60.0):
        self.stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        self.operations = OperationsClient(channel, timeout)
        self.timeout = timeout

    def ensure(self, dataset_id: str, display_name: str = "") -> ds.Dataset:
        try:
            return call(self.stub.GetDataset, ds.GetDatasetRequest(name=f"datasets/{dataset_id}"),
                        timeout=self.timeout).dataset
        except UmbraRpcError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
        return call(self.stub.CreateDataset, ds.CreateDatasetRequest(
            dataset_id=dataset_id, dataset=ds.Dataset(display_name=display_name or dataset_id),
            request_id=_request_id("create", dataset_id)), timeout=self.timeout).dataset

    def upload(self, folder: Path, dataset_id: str, *, layout: str = "auto", policy: SizePolicy | None = None,
               seed: int = 0, drop_invalid: bool = False, shard_bytes: int = DEFAULT_SHARD_BYTES,
               progress: bool = True) -> ds.DatasetVersion:
        """Validates the folder, writes shards, uploads them and the manifest, and commits a new version."""
        bar = _Bar(progress)
        policy = policy or SizePolicy()
        plan = ingest.scan(folder, layout=layout, policy=policy, seed=seed, progress=bar.step("checking images"))
        if plan.problems and not drop_invalid:
            raise IngestRejected(plan.problems)
        if not plan.entries:
            raise IngestRejected(plan.problems or [ingest.Problem(str(folder), "no images found")])
        self.ensure(dataset_id)
        with tempfile.TemporaryDirectory(prefix="umbra-upload-") as tmp:
            shard_sha: dict[str, str] = {}

            def save(name: str, data: bytes) -> None:
                (Path(tmp) / name).write_bytes(data)
                shard_sha[name] = hashlib.sha256(data).hexdigest()

            writer = ShardWriter(save, shard_bytes)
            samples = ingest.write_shards(plan, writer, policy, progress=bar.step("writing shards"))
            shards = writer.close()
            header = mf.Header(image_size=plan.image_size, label_columns=plan.label_columns,
                               attribute_columns=plan.attribute_columns, shards=shards, samples=len(samples),
                               seed=seed, shard_sha256=shard_sha)
            manifest_bytes = mf.dumps(header, samples)
            content_id = hashlib.sha256(manifest_bytes).hexdigest()
            created = call(self.stub.CreateDatasetVersion, ds.CreateDatasetVersionRequest(
                parent=f"datasets/{dataset_id}", shard_count=len(shards),
                request_id=_request_id("version", dataset_id, content_id)), timeout=self.timeout)
            version = created.dataset_version.name
            if created.dataset_version.state == ds.DatasetVersion.STATE_COMMITTED:
                bar.close()
                return created.dataset_version  # this very upload was committed before: nothing to do again
            if created.manifest_target.shard:  # empty when a commit of this upload is already under way
                uploading = bar.step("uploading")
                for done, target in enumerate(created.shard_targets, start=1):
                    self._put(version, target, (Path(tmp) / target.shard).read_bytes())
                    uploading(done, len(shards))
                self._put(version, created.manifest_target, manifest_bytes)
        bar.close()
        commit = call(self.stub.CommitDatasetVersion, ds.CommitDatasetVersionRequest(
            name=version, drop_invalid=drop_invalid, request_id=_request_id("commit", version, content_id)),
            timeout=self.timeout)
        return self.operations.result(commit.operation.name, ds.DatasetVersion, progress=progress)

    def _put(self, version: str, target: ds.UploadTarget, data: bytes) -> None:
        if target.url:
            _http("PUT", target.url, data)
            return
        sha = hashlib.sha256(data).hexdigest()

        def chunks() -> Iterator[ds.UploadDatasetChunkRequest]:
            for offset in range(0, max(len(data), 1), CHUNK):
                last = offset + CHUNK >= len(data)
                yield ds.UploadDatasetChunkRequest(dataset_version=version, shard=target.shard, offset=offset,
                                                   data=data[offset:offset + CHUNK], sha256=sha if last else "")

        call(self.stub.UploadDatasetChunk, chunks(), timeout=self.timeout)

    def _get(self, version: str, source: ds.UploadTarget) -> bytes:
        if source.url:
            return _http("GET", source.url)
        parts, sha = [], ""
        for message in call(lambda: list(self.stub.DownloadDatasetChunk(
                ds.DownloadDatasetChunkRequest(dataset_version=version, shard=source.shard), timeout=self.timeout))):
            parts.append(message.data)
            sha = message.sha256 or sha
        data = b"".join(parts)
        if sha and hashlib.sha256(data).hexdigest() != sha:
            raise UmbraRpcError(grpc.StatusCode.DATA_LOSS, f"{source.shard} arrived corrupt",
                                reason="CHECKSUM_MISMATCH")
        return data

    def read(self, version: str) -> tuple[mf.Header, Iterator[tuple[mf.Sample, bytes]]]:
        """A committed version's header, and its samples with their image bytes, one shard at a time."""
        export = call(self.stub.ExportDatasetVersion, ds.ExportDatasetVersionRequest(name=version),
                      timeout=self.timeout)
        header, samples = mf.loads(self._get(version, export.manifest_source).decode().splitlines())
        by_shard: dict[str, list[mf.Sample]] = {}
        for sample in samples:
            by_shard.setdefault(sample.shard, []).append(sample)

        def images() -> Iterator[tuple[mf.Sample, bytes]]:
            for source in export.shard_sources:
                data = self._get(version, source)
                if hashlib.sha256(data).hexdigest() != header.shard_sha256.get(source.shard):
                    raise UmbraRpcError(grpc.StatusCode.DATA_LOSS, f"{source.shard} does not match its manifest",
                                        reason="CHECKSUM_MISMATCH")
                wanted = {s.key: s for s in by_shard.get(source.shard, [])}
                for member in iter_shard(io.BytesIO(data)):
                    if member.key in wanted:
                        yield wanted.pop(member.key), member.image

        return header, images()

    def export(self, version: str, folder: Path) -> int:
        """Writes a committed version to `folder` (images/ and labels.csv); returns the number of images."""
        header, images = self.read(version)
        count = 0

        def counted() -> Iterator[tuple[mf.Sample, bytes]]:
            nonlocal count
            for item in images:
                count += 1
                yield item

        ingest.export(counted(), folder, header.label_columns)
        return count


class _Bar:
    """One progress bar per step on stderr (or nothing); off a terminal, a line every few seconds."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Progress | None = None

    def step(self, name: str):
        def update(done: int, total: int) -> None:
            if not self.enabled:
                return
            if self.bar is None or self.bar.stage != name:
                self.close()
                self.bar = Progress(name, total=total)
            self.bar.show(done=done, total=total)

        return update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
