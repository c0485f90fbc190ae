"""Dataset uploads for the tests: small shards of synthetic faces, and an upload stream held open half-way (so a
test can delete or commit while it is under way)."""

from __future__ import annotations

import hashlib
import threading

import grpc

from umbra.client.datasets import DatasetsClient
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.dataset import manifest as mf
from umbra.dataset import synthetic
from umbra.dataset.shards import ShardWriter


def face(seed: int) -> bytes:
    return next(synthetic.generate(1, size=32, seed=seed)).png


def shard_of(images: dict[str, bytes], labels: dict[str, dict] | None = None) -> tuple[bytes, list[mf.Sample]]:
    """One shard holding `images`, and its manifest samples."""
    out: list[bytes] = []
    writer = ShardWriter(lambda name, data: out.append(data), max_bytes=1 << 30)
    samples = [writer.add(mf.Sample(key=k, shard="", split="train", sha256=hashlib.sha256(v).hexdigest(),
                                    size=len(v), labels=(labels or {}).get(k, {})), v) for k, v in images.items()]
    writer.close()
    return out[0], samples



class HeldStream:
    """An UploadDatasetChunk stream that sends its first chunk, then waits for `release` before the rest."""

    def __init__(self, client: DatasetsClient, version: str, data: bytes, *, sha256: str | None = None):
        self.release = threading.Event()
        self.sent_first = threading.Event()
        self.error: grpc.RpcError | None = None
        half = len(data) // 2
        digest = sha256 or hashlib.sha256(data).hexdigest()

        def messages():
            yield ds.UploadDatasetChunkRequest(dataset_version=version, shard="shard-000000.tar", offset=0,
                                               data=data[:half])
            self.sent_first.set()
            self.release.wait(30)
            yield ds.UploadDatasetChunkRequest(dataset_version=version, shard="shard-000000.tar", offset=half,
                                               data=data[half:], sha256=digest)

        def run():
            try:
                client.stub.UploadDatasetChunk(messages(), timeout=60)
            except grpc.RpcError as exc:
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.sent_first.wait(10)

    def finish(self) -> grpc.RpcError | None:
        self.release.set()
        self.thread.join(30)
        return self.error
