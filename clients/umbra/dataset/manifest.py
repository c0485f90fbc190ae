"""The manifest of a dataset version: a header line, then one JSON line per sample.

    {"format": "umbra-dataset/1", "image_size": 64, "label_columns": [...], "attribute_columns": [...],
     "shards": ["shard-000000.tar", ...], "shard_sha256": {"shard-000000.tar": "…"}, "samples": 3000, "seed": 0}
    {"key": "img-000001", "shard": "shard-000000.tar", "split": "train", "sha256": "…", "size": 1234,
     "labels": {"gender": "1", "age": "23"}, "attributes": {"age": 23.0}, "media_type": "image/png"}

Keys are validated: they become tar member names (`<key>.png`, USTAR: at most 100 bytes) and WebDataset
groups members by the part before the first dot, so a key is 1-95 characters of [A-Za-z0-9_-], no dots.

Every field is type-checked when a manifest is parsed (a label that is an object, a size that is a string, an
unknown field: each is a `ManifestError` naming the line and the field), so what a client committed can be
trusted by every reader after the coordinator's check.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields

FORMAT = "umbra-dataset/1"
SPLITS = ("train", "val", "test")
# Patterns are matched whole (re.fullmatch: "$" would accept a trailing newline) and ASCII only.
KEY = re.compile(r"[A-Za-z0-9_-]{1,95}")
MEDIA_TYPES = ("image/png", "image/jpeg")
SHARD = re.compile(r"shard-[0-9]{6}\.tar")
SHA256 = re.compile(r"[0-9a-f]{64}")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # the client's SizePolicy bounds
MAX_COLUMNS = 1000  # label or attribute columns
MAX_NAME_CHARS = 200  # a column name
MAX_VALUE_CHARS = 1000  # a label value
MAX_SHARDS = 100_000


class ManifestError(ValueError):
    """The manifest is malformed; the message names the line and the field."""


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not KEY.fullmatch(key):
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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a list of strings")
    if len(value) > MAX_COLUMNS:
        raise TypeError(f"{what} has {len(value)} entries (at most {MAX_COLUMNS})")
    if len(set(value)) != len(value) or any(not v or len(v) > MAX_NAME_CHARS or "\n" in v for v in value):
        raise TypeError(f"{what} must be unique, non-empty names of at most {MAX_NAME_CHARS} characters")
    return value


def _check_header(header: Header) -> None:
    """Raises TypeError naming the field whose type or range is wrong."""
    if not isinstance(header.format, str) or header.format != FORMAT:
        raise TypeError(f"format {header.format!r} is not {FORMAT!r}")
    if not _is_int(header.image_size) or not MIN_IMAGE_SIZE <= header.image_size <= MAX_IMAGE_SIZE:
        raise TypeError(f"image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}")
    _names(header.label_columns, "label_columns")
    _names(header.attribute_columns, "attribute_columns")
    if not isinstance(header.shards, list) or not all(isinstance(s, str) and SHARD.fullmatch(s) for s in header.shards):
        raise TypeError("shards must be a list of names like shard-000000.tar")
    if len(header.shards) > MAX_SHARDS or len(set(header.shards)) != len(header.shards):
        raise TypeError(f"shards must be unique and at most {MAX_SHARDS}")
    if not _is_int(header.samples) or header.samples < 0:
        raise TypeError("samples must be a whole number")
    if not _is_int(header.seed):
        raise TypeError("seed must be an integer")
    sha = header.shard_sha256
    if not isinstance(sha, dict) or not all(isinstance(v, str) and SHA256.fullmatch(v) and k in header.shards
                                            for k, v in sha.items()):
        raise TypeError("shard_sha256 must map the header's shards to hex SHA-256 digests")


def _check_sample(sample: Sample) -> None:
    """Raises TypeError naming the field whose type or range is wrong."""
    validate_key(sample.key)
    if not isinstance(sample.split, str) or sample.split not in SPLITS:
        raise TypeError(f"split {sample.split!r} is not one of {', '.join(SPLITS)}")
    if not isinstance(sample.shard, str) or not SHARD.fullmatch(sample.shard):
        raise TypeError(f"shard {sample.shard!r} is not like shard-000000.tar")
    if not isinstance(sample.media_type, str) or sample.media_type not in MEDIA_TYPES:
        raise TypeError(f"media_type {sample.media_type!r} is not one of {', '.join(MEDIA_TYPES)}")
    if not isinstance(sample.sha256, str) or not SHA256.fullmatch(sample.sha256) or not _is_int(sample.size) \
            or sample.size <= 0:
        raise TypeError("sha256 and size must describe a non-empty image")
    labels = sample.labels
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_VALUE_CHARS
                                               for k, v in labels.items()):
        raise TypeError(f"labels must map column names to strings of at most {MAX_VALUE_CHARS} characters")
    if len(labels) > MAX_COLUMNS:
        raise TypeError(f"labels has more than {MAX_COLUMNS} columns")
    attributes = sample.attributes
    if not isinstance(attributes, dict) or len(attributes) > MAX_COLUMNS or not all(
            isinstance(k, str) and (isinstance(v, str) and len(v) <= MAX_VALUE_CHARS
                                    or isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v))
            for k, v in attributes.items()):
        raise TypeError("attributes must map column names to strings or finite numbers")


def _construct(cls, line: str):
    data = json.loads(line)
    if not isinstance(data, dict):
        raise TypeError("must be a JSON object")
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"unknown field {sorted(unknown)[0]!r}")
    return cls(**data)


def parse_header(line: str) -> Header:
    try:
        header = _construct(Header, line)
        _check_header(header)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ManifestError(f"manifest line 1 (header): {exc}") from None
    return header


def parse_sample(line: str, number: int) -> Sample:
    try:
        sample = _construct(Sample, line)
        _check_sample(sample)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ManifestError(f"manifest line {number}: {exc}") from None
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
