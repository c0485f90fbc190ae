"""Dataset versions in object storage: checking an upload before it is committed (the manifest's size and every
field, every shard's bytes, every image decoded), and reading a committed version back as a stream (one GET per
shard, memory flat however large the dataset).

A version is visible exactly when its manifest (`keys.manifest`) exists: the commit writes it last.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field, replace

from umbra.dataset import images, manifest as mf
from umbra.dataset.shards import iter_shard
from umbra.runtime.errors import FailedPrecondition, InvalidInput, NotFound
from umbra.storage import keys
from umbra.storage.base import ObjectStore


MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # about 200,000 samples with a few labels each
MAX_SAMPLES = 200_000


@dataclass
class UploadCheck:
    header: mf.Header
    samples: list[mf.Sample]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (sample or shard, reason)


def read_upload_manifest(store: ObjectStore, bucket: str, dataset: str, version: int
                         ) -> tuple[mf.Header, list[mf.Sample]]:
    """The uploader's manifest, size-checked before it is read and every field type-checked; InvalidInput naming
    the line and the field when it is malformed."""
    key = keys.upload_manifest(dataset, version)
    info = store.stat(bucket, key)
    if info is None:
        raise FailedPrecondition("nothing to commit: the manifest was not uploaded", reason="MANIFEST_MISSING")
    if info.size > MAX_MANIFEST_BYTES:
        raise InvalidInput("manifest", f"is {info.size} bytes; a version's manifest may be at most "
                                       f"{MAX_MANIFEST_BYTES} bytes (split the dataset into several)")
    try:
        raw = store.get(bucket, key)
    except NotFound:
        raise FailedPrecondition("nothing to commit: the manifest was not uploaded", reason="MANIFEST_MISSING") \
            from None
    if len(raw) > MAX_MANIFEST_BYTES:  # replaced since the stat
        raise InvalidInput("manifest", f"may be at most {MAX_MANIFEST_BYTES} bytes")
    try:
        header, sample_iter = mf.loads(raw.decode().splitlines())
        samples = list(itertools.islice(sample_iter, MAX_SAMPLES + 1))
    except (mf.ManifestError, UnicodeDecodeError) as exc:
        raise InvalidInput("manifest", str(exc)) from None
    if len(samples) > MAX_SAMPLES:
        raise InvalidInput("manifest", f"holds more than {MAX_SAMPLES} samples")
    if header.samples != len(samples):
        raise InvalidInput("manifest", f"header says {header.samples} samples, lines hold {len(samples)}")
    if len({s.key for s in samples}) != len(samples):
        raise InvalidInput("manifest", "sample keys repeat")
    shards = set(header.shards)
    for sample in samples:
        if sample.shard not in shards:
            raise InvalidInput("manifest", f"sample {sample.key} names shard {sample.shard}, which the header lacks")
    return header, samples


def check_shards(store: ObjectStore, bucket: str, dataset: str, version: int, header: mf.Header,
                 samples: list[mf.Sample], *, progress: Callable[[int, int], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> UploadCheck:
    """Reads every shard the manifest names, as the commit copied it (`keys.shard`): each must hash to its
    declared SHA-256 and hold every sample the manifest puts in it, with the declared SHA-256 and size, and every
    image must decode as what the version promises (`images.check_stored`: the header's size, RGB, the declared
    media type, no metadata). Problems are collected by sample or shard name, never raised."""
    check = UploadCheck(header, samples)
    by_shard: dict[str, dict[str, mf.Sample]] = {name: {} for name in header.shards}
    for sample in samples:
        by_shard[sample.shard][sample.key] = sample
    for done, shard in enumerate(header.shards):
        if cancelled():
            break
        expected = by_shard[shard]
        declared = header.shard_sha256.get(shard, "")
        try:
            stream = store.open(bucket, keys.shard(dataset, version, shard))
        except NotFound:
            check.problems += [(shard, "shard was not uploaded")]
            check.problems += [(key, f"its shard {shard} is missing") for key in expected]
            continue
        hasher = _Hashing(stream)
        seen = set()
        try:
            for member in iter_shard(hasher):
                sample = expected.get(member.key)
                if sample is None:
                    continue  # a member the manifest does not list is ignored, never published
                seen.add(member.key)
                if hashlib.sha256(member.image).hexdigest() != sample.sha256 or len(member.image) != sample.size:
                    check.problems.append((member.key, "image bytes differ from the manifest's sha256/size"))
                    continue
                try:
                    images.check_stored(member.image, size=header.image_size, media_type=sample.media_type)
                except images.ImageProblem as exc:
                    check.problems.append((member.key, exc.reason))
            hasher.drain()
        except Exception as exc:  # noqa: BLE001 - a broken tar is reported by name
            check.problems.append((shard, f"unreadable shard: {exc}"))
        finally:
            stream.close()
        if declared and hasher.hexdigest() != declared:
            check.problems.append((shard, "shard bytes differ from the manifest's shard_sha256"))
        check.problems += [(key, f"missing from {shard}") for key in expected if key not in seen]
        if progress:
            progress(done + 1, len(header.shards))
    return check


class _Hashing:
    def __init__(self, stream):
        self._stream = stream
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1024 * 1024):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def publishable(check: UploadCheck, drop_invalid: bool) -> tuple[mf.Header, list[mf.Sample]]:
    """The header and samples to commit: all of them, or with drop_invalid those without a problem."""
    bad = {name for name, _ in check.problems}
    if bad and not drop_invalid:
        listed = "; ".join(f"{name}: {reason}" for name, reason in check.problems[:20])
        more = f" (and {len(check.problems) - 20} more)" if len(check.problems) > 20 else ""
        raise InvalidInput("dataset_version", f"{len(check.problems)} problems, nothing committed: {listed}{more}"
                                              " (commit with drop_invalid to leave these samples out)")
    kept = [s for s in check.samples if s.key not in bad and s.shard not in bad]
    if not kept:
        raise InvalidInput("dataset_version", "no valid samples to commit")
    shards = [name for name in check.header.shards if name not in bad]
    header = replace(check.header, samples=len(kept), shards=shards,
                     shard_sha256={k: v for k, v in check.header.shard_sha256.items() if k in shards})
    return header, kept


def stats(header: mf.Header, samples: list[mf.Sample], size_bytes: int) -> dict:
    splits: dict[str, int] = {}
    for s in samples:
        splits[s.split] = splits.get(s.split, 0) + 1
    return {"samples": len(samples), "shards": len(header.shards), "size_bytes": size_bytes,
            "image_size": header.image_size, "label_columns": header.label_columns,
            "attribute_columns": header.attribute_columns, "split_counts": splits}


class DatasetReader:
    """Streams a committed version: the manifest lazily, then each shard with one GET, verified."""

    def __init__(self, store: ObjectStore, bucket: str, dataset: str, version: int):
        self.store, self.bucket, self.dataset, self.version = store, bucket, dataset, version
        with store.open(bucket, keys.manifest(dataset, version)) as stream:
            first = _readline(stream)
        self.header = mf.parse_header(first)

    def samples(self) -> Iterator[mf.Sample]:
        stream = self.store.open(self.bucket, keys.manifest(self.dataset, self.version))
        with stream:
            _, samples = mf.loads(_lines(stream))
            yield from samples

    def iter_images(self, *, split: str | None = None,
                    only: Container[str] | None = None) -> Iterator[tuple[mf.Sample, bytes]]:
        """(sample, encoded image) shard by shard; each shard's SHA-256 is checked as it streams. The manifest
        lists samples grouped by shard, so only one shard's manifest lines are held at a time. With `only` (keys),
        only those samples, and a shard that holds none of them is not read."""
        for shard, group in itertools.groupby(self.samples(), key=lambda s: s.shard):
            wanted = {s.key: s for s in group
                      if (split is None or s.split == split) and (only is None or s.key in only)}
            if only is not None and not wanted:
                continue
            stream = self.store.open(self.bucket, keys.shard(self.dataset, self.version, shard),
                                     expected_sha256=self.header.shard_sha256.get(shard, ""))
            with stream:
                for member in iter_shard(stream):
                    sample = wanted.pop(member.key, None)
                    if sample is not None:
                        yield sample, member.image
                while stream.read(1024 * 1024):  # read to the end so the checksum is verified
                    pass
            if wanted:
                raise FailedPrecondition(f"{shard} lacks {len(wanted)} samples its manifest lists",
                                         reason="DATASET_CORRUPT")


def _readline(stream) -> str:
    buffer = io.BytesIO()
    while True:
        chunk = stream.read(4096)
        if not chunk:
            break
        buffer.write(chunk)
        if b"\n" in chunk:
            break
    return buffer.getvalue().split(b"\n", 1)[0].decode()


def _lines(stream) -> Iterator[str]:
    rest = b""
    while chunk := stream.read(64 * 1024):  # small reads: a big manifest is never held whole
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line.decode()
    if rest:
        yield rest.decode()
