"""The manifest's types are checked field by field (issue 15, class 6): a committed manifest can be trusted."""

import json

import pytest

from umbra.dataset import manifest as mf

HEADER = {"format": mf.FORMAT, "image_size": 64, "label_columns": ["gender"], "attribute_columns": [],
          "shards": ["shard-000000.tar"], "samples": 1, "seed": 0, "shard_sha256": {"shard-000000.tar": "a" * 64}}
SAMPLE = {"key": "img-1", "shard": "shard-000000.tar", "split": "train", "sha256": "b" * 64, "size": 10,
          "labels": {"gender": "1"}, "attributes": {"age": 23.0}, "media_type": "image/png"}


def test_a_good_manifest_round_trips():
    header, samples = mf.loads(mf.dumps(mf.parse_header(json.dumps(HEADER)),
                                        [mf.parse_sample(json.dumps(SAMPLE), 2)]).decode().splitlines())
    assert header.image_size == 64 and list(samples)[0].labels == {"gender": "1"}


@pytest.mark.parametrize("field, value", [
    ("image_size", "64"), ("image_size", 13000), ("image_size", True), ("label_columns", [{"a": 1}]),
    ("label_columns", ["a", "a"]), ("shards", ["shard-1.tar"]), ("shards", "shard-000000.tar"),
    ("samples", -1), ("seed", 1.5), ("shard_sha256", {"shard-000009.tar": "a" * 64}), ("format", ["x"]),
    ("unknown", 1),
])
def test_header_fields_are_type_checked(field, value):
    with pytest.raises(mf.ManifestError, match="line 1"):
        mf.parse_header(json.dumps(HEADER | {field: value}))


@pytest.mark.parametrize("field, value", [
    ("labels", {"gender": {"nested": True}}), ("labels", ["1"]), ("labels", {"gender": 1}),
    ("attributes", {"age": float("inf")}), ("attributes", {"age": [1]}), ("size", "10"), ("size", 0),
    ("key", "a\n"), ("key", 5), ("split", ["train"]), ("sha256", "B" * 64), ("media_type", "image/gif"),
    ("shard", "shard-١٢٣٤٥٦.tar"), ("labels", {"gender": "x" * 1001}),
])
def test_sample_fields_are_type_checked(field, value):
    with pytest.raises(mf.ManifestError, match="line 7"):
        mf.parse_sample(json.dumps(SAMPLE | {field: value}), 7)


@pytest.mark.parametrize("line", ["[]", "1", '"text"', "null", "[" * 100_000])
def test_a_line_that_is_not_an_object_is_refused(line):
    with pytest.raises(mf.ManifestError):
        mf.parse_sample(line, 2)
