"""Tar shards of encoded images, WebDataset-compatible: members `<key>.png` (or `.jpg`) and `<key>.json`
(labels and attributes), in the order samples are added. A shard closes when adding a sample would take it
past `max_bytes` (give or take the tar format's padding, a few KiB)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from umbra.dataset.manifest import Sample, shard_name, validate_key

DEFAULT_SHARD_BYTES = 64 * 1024 * 1024


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # deterministic shards: the same samples give the same bytes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Writes samples into shards; `on_shard(name, data)` receives each finished shard's bytes."""

    def __init__(self, on_shard: Callable[[str, bytes], None], max_bytes: int = DEFAULT_SHARD_BYTES):
        if max_bytes < 1024:
            raise ValueError("shard size: at least 1024 bytes")
        self._on_shard = on_shard
        self._max = max_bytes
        self._index = 0
        self._buffer: io.BytesIO | None = None
        self._tar: tarfile.TarFile | None = None
        self.shards: list[str] = []
        self._keys: set[str] = set()

    def add(self, sample: Sample, image: bytes) -> Sample:
        """Adds one sample; returns it with its shard filled in. Keys are validated and may not repeat."""
        validate_key(sample.key)
        if sample.key in self._keys:
            raise ValueError(f"sample key {sample.key!r} was already added")
        self._keys.add(sample.key)
        meta = json.dumps({"labels": sample.labels, "attributes": sample.attributes}, sort_keys=True).encode()
        needed = len(image) + len(meta) + 3 * 512
        if self._tar is not None and self._buffer.tell() + needed > self._max:
            self._flush()
        if self._tar is None:
            self._buffer = io.BytesIO()
            self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.USTAR_FORMAT)
        _add(self._tar, f"{sample.key}.{sample.extension}", image)
        _add(self._tar, f"{sample.key}.json", meta)
        return replace(sample, shard=shard_name(self._index))

    def _flush(self) -> None:
        self._tar.close()
        name = shard_name(self._index)
        self._on_shard(name, self._buffer.getvalue())
        self.shards.append(name)
        self._index += 1
        self._tar = self._buffer = None

    def close(self) -> list[str]:
        if self._tar is not None:
            self._flush()
        return self.shards


@dataclass(frozen=True)
class Member:
    key: str
    image: bytes
    extension: str


def iter_shard(stream: BinaryIO) -> Iterator[Member]:
    """Streams the images of one shard (tar read in stream mode: nothing is seeked, nothing kept)."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, extension = info.name.rpartition(".")
            if extension in ("png", "jpg"):
                data = tar.extractfile(info).read()
                yield Member(key, data, extension)
