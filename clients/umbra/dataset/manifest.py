"""The manifest of a dataset version: a header line, then one JSON line per sample.

    {"format": "umbra-dataset/1", "image_size": 64, "label_columns": [...], "attribute_columns": [...],
     "shards": ["shard-000000.tar", ...], "shard_sha256": {"shard-000000.tar": "…"}, "samples": 3000, "seed": 0}
    {"key": "img-000001", "shard": "shard-000000.tar", "split": "train", "sha256": "…", "size": 1234,
     "labels": {"gender": "1", "age": "23"}, "attributes": {"age": 23.0}, "media_type": "image/png"}

Keys are validated: they become tar member names (`<key>.png`, USTAR: at most 100 bytes) and WebDataset
groups members by the part before the first dot, so a key is 1-95 characters of [A-Za-z0-9_-], no dots.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

FORMAT = "umbra-dataset/1"
SPLITS = ("train", "val", "test")
KEY = re.compile(r"^[A-Za-z0-9_-]{1,95}$")
MEDIA_TYPES = ("image/png", "image/jpeg")
SHARD = re.compile(r"^shard-\d{6}\.tar$")


class ManifestError(ValueError):
    """The manifest is malformed; the message names the line and the field."""


def validate_key(key: str) -> str:
    if not KEY.match(key):
        raise ManifestError(f"sample key {key!r}: use 1-95 characters of letters, digits, '_' and '-'")
    return key


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


@dataclass(frozen=True)
class Sample:
    key: str
    shard: str
    split: str
    sha256: str
    size: int
    labels: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str | float] = field(default_factory=dict)
    media_type: str = "image/png"

    @property
    def extension(self) -> str:
        return "jpg" if self.media_type == "image/jpeg" else "png"


@dataclass(frozen=True)
class Header:
    image_size: int
    label_columns: list[str]
    attribute_columns: list[str]
    shards: list[str]
    samples: int
    seed: int = 0
    # shard name -> hex SHA-256 of the shard's bytes, checked when the version is committed and when it is read
    shard_sha256: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT


def dumps(header: Header, samples: Iterable[Sample]) -> bytes:
    lines = [json.dumps(asdict(header), sort_keys=True)]
    lines += [json.dumps(asdict(s), sort_keys=True) for s in samples]
    return ("\n".join(lines) + "\n").encode()


def parse_header(line: str) -> Header:
    try:
        data = json.loads(line)
        header = Header(**data)
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"manifest line 1 (header): {exc}") from None
    if header.format != FORMAT:
        raise ManifestError(f"manifest line 1: format {header.format!r} is not {FORMAT!r}")
    return header


def parse_sample(line: str, number: int) -> Sample:
    try:
        sample = Sample(**json.loads(line))
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"manifest line {number}: {exc}") from None
    try:
        validate_key(sample.key)
    except ManifestError as exc:
        raise ManifestError(f"manifest line {number}: {exc}") from None
    if sample.split not in SPLITS:
        raise ManifestError(f"manifest line {number}: split {sample.split!r} is not one of {', '.join(SPLITS)}")
    if not SHARD.match(sample.shard):
        raise ManifestError(f"manifest line {number}: shard {sample.shard!r} is not like shard-000000.tar")
    if sample.media_type not in MEDIA_TYPES:
        raise ManifestError(f"manifest line {number}: media_type {sample.media_type!r} is not one of "
                            f"{', '.join(MEDIA_TYPES)}")
    if not re.fullmatch(r"[0-9a-f]{64}", sample.sha256) or sample.size <= 0:
        raise ManifestError(f"manifest line {number}: sha256 and size must describe a non-empty image")
    return sample


def loads(lines: Iterable[str]) -> tuple[Header, Iterator[Sample]]:
    """Parses a manifest lazily: the header now, the samples as they are iterated (memory stays flat)."""
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise ManifestError("manifest is empty") from None
    header = parse_header(first)

    def samples() -> Iterator[Sample]:
        for number, line in enumerate(it, start=2):
            if line.strip():
                yield parse_sample(line, number)

    return header, samples()
