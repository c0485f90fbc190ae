"""Writing a dataset version computed from another one (an MDP release, an anonymized version), shard by shard
and resumably, into a version the coordinator reserved; the coordinator's CommitDatasetVersion then checks
every shard and makes it visible (versions are numbered and published by the coordinator only).

    out = DerivedVersion(store, bucket, source=("faces", 1), output=("faces", 3), fingerprint=job_hash,
                         kind="distortion")
    out.check()                         # before compute: not the source, not committed, not another request's
    out.claim()                         # when the work starts
    part = out.finished(shard) or out.write_shard(shard, [(sample, png, record_row), ...])
    out.staged()                        # whether the upload manifest is written (the work is finished)
    out.finish(parts, header, record)   # the private record, then the upload manifest

What is written under `datasets/<d>/v<n>/`: the shards and `upload/manifest.jsonl`, staged under `upload/` (the
manifest last: the version is then ready to commit) and, under `private/` (never exported), `<kind>-record.json`,
`run.json` (the fingerprint of
the request the version belongs to, so a different request never mixes its shards in) and, while the work
runs, `parts/<shard>.json` (each finished shard's manifest lines and record rows, written after the shard:
a rerun skips those shards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import numpy as np
from PIL import Image

from umbra.dataset import manifest as mf
from umbra.dataset.shards import ShardWriter
from umbra.runtime.errors import FailedPrecondition, InvalidInput, NotFound
from umbra.storage import keys
from umbra.storage.base import ObjectStore

RUN = "run.json"


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class DerivedVersion:
    store: ObjectStore
    bucket: str
    source: tuple[str, int]
    output: tuple[str, int]
    fingerprint: str  # identifies the request
    kind: str  # "distortion", "anonymization": names the record and the errors

    def key(self, name: str) -> str:
        return keys.private(*self.output, name)

    @property
    def record_name(self) -> str:
        return f"{self.kind}-record.json"

    def check(self, field: str = "output_version") -> None:
        dataset, version = self.output
        if self.output == self.source:
            raise InvalidInput(field, "is the source version; versions are immutable")
        if self.store.stat(self.bucket, keys.manifest(dataset, version)) is not None:
            raise FailedPrecondition(f"datasets/{dataset}/versions/{version} is already committed; reserve a new "
                                     f"version for the output", reason="VERSION_NOT_UPLOADING")
        try:
            earlier = json.loads(self.store.get(self.bucket, self.key(RUN)))
        except NotFound:
            earlier = None
        if earlier is not None and earlier.get("fingerprint") != self.fingerprint:
            raise FailedPrecondition(f"datasets/{dataset}/versions/{version} already holds shards of another "
                                     f"{self.kind} request; reserve a new version for this one",
                                     reason="VERSION_IN_USE")

    def claim(self) -> None:
        self.store.put(self.bucket, self.key(RUN), json.dumps({"fingerprint": self.fingerprint}).encode(),
                       content_type="application/json")

    def staged(self) -> bool:
        """Whether the upload manifest is written (every shard is, and their parts are gone)."""
        return self.store.stat(self.bucket, keys.upload_manifest(*self.output)) is not None

    def finished(self, shard: str) -> dict | None:
        """The part of a shard an earlier run finished, or None."""
        try:
            return json.loads(self.store.get(self.bucket, self.key(f"parts/{shard}.json")))
        except NotFound:
            return None

    def write_shard(self, shard: str, entries: list[tuple[mf.Sample, bytes, dict]]) -> dict:
        """Puts the shard of (sample, image bytes, record row) entries, then its part (so a part always means a
        finished shard); returns the part. Each sample's size and SHA-256 are set from its bytes."""
        tar: list[bytes] = []
        writer = ShardWriter(lambda name, data: tar.append(data), max_bytes=1 << 62)
        samples, record = [], []
        for sample, data, row in entries:
            sample = dataclasses.replace(sample, size=len(data), sha256=hashlib.sha256(data).hexdigest())
            writer.add(sample, data)
            samples.append(dataclasses.asdict(dataclasses.replace(sample, shard=shard)))
            record.append(row)
        writer.close()
        data = tar[0]
        self.store.put(self.bucket, keys.upload_shard(*self.output, shard), data, content_type="application/x-tar")
        part = {"shard": shard, "sha256": hashlib.sha256(data).hexdigest(), "samples": samples, "record": record}
        self.store.put(self.bucket, self.key(f"parts/{shard}.json"), json.dumps(part).encode(),
                       content_type="application/json")
        return part

    def finish(self, parts: list[dict], header: mf.Header, record: dict) -> tuple[str, str]:
        """The private record (with every part's rows as `samples`), then the upload manifest (shards, samples
        and hashes filled in from the parts), then the parts go. Returns (record key, manifest key)."""
        record = dict(record, samples=[row for part in parts for row in part["record"]])
        record_info = self.store.put(self.bucket, self.key(self.record_name), json.dumps(record, indent=1).encode(),
                                     content_type="application/json")
        samples = [mf.Sample(**sample) for part in parts for sample in part["samples"]]
        header = dataclasses.replace(header, shards=[p["shard"] for p in parts], samples=len(samples),
                                     shard_sha256={p["shard"]: p["sha256"] for p in parts})
        manifest_key = keys.upload_manifest(*self.output)
        self.store.put(self.bucket, manifest_key, mf.dumps(header, samples), content_type="application/x-ndjson")
        for part in parts:
            self.store.delete(self.bucket, self.key(f"parts/{part['shard']}.json"))
        return record_info.key, manifest_key
