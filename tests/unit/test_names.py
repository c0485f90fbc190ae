import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbra.runtime import names
from umbra.runtime.errors import InvalidInput

IDS = st.from_regex(r"[a-z][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True)


@given(IDS, st.integers(1, 10**9 - 1))
def test_versioned_names_round_trip(resource, version):
    assert names.model_version(f"models/{resource}/versions/{version}") == (resource, version)
    assert names.dataset_version(f"datasets/{resource}/versions/{version}") == (resource, version)
    assert names.model(f"models/{resource}") == resource and names.dataset(f"datasets/{resource}") == resource


@pytest.mark.parametrize("name", ["", "models/", "models/a", "models/ok-id/versions/0", "models/ok-id/versions/-1",
                                  "models/ok-id/versions/1x", "models/ok-id/versions/１", "datasets/ok-id",
                                  "models/ok-id/versions/1/extra", "models/ok-id/version/1", "models/Bad/versions/1",
                                  "models/ok-id/versions/" + "9" * 10])
def test_bad_model_version_names_name_the_field(name):
    with pytest.raises(InvalidInput, match="^model: "):
        names.model_version(name, "model")


def test_operation_names_give_the_run_id():
    assert names.operation("operations/" + "a" * 32) == "a" * 32
    with pytest.raises(InvalidInput, match="name"):
        names.operation("operations/" + "A" * 32)


def test_tenant_and_api_key_names():
    assert names.tenant("tenants/acme") == "acme"
    assert names.api_key("tenants/acme/apiKeys/0123456789ab") == ("acme", "0123456789ab")
    with pytest.raises(InvalidInput):
        names.api_key("tenants/acme/apiKeys/xyz")


# Issue 15, class 7: "$" accepted a trailing newline, and \d or str.isdigit accepted other scripts' digits.
@pytest.mark.parametrize("parse, name", [
    (names.dataset, "datasets/faces\n"), (names.dataset_version, "datasets/faces\n/versions/1"),
    (names.dataset_version, "datasets/faces/versions/١"), (names.dataset_version, "datasets/faces/versions/1\n"),
    (names.model, "models/cnn\n"), (names.tenant, "tenants/acme\n"),
    (names.api_key, "tenants/acme/apiKeys/0123456789ab\n"),
    (names.operation, "operations/" + "a" * 32 + "\n"), (names.dataset, "datasets/ｆaces"),
])
def test_ids_are_matched_whole_and_ascii_only(parse, name):
    with pytest.raises(InvalidInput):
        parse(name)


def test_object_key_parts_are_matched_whole():
    from umbra.dataset import manifest as mf
    from umbra.storage import keys

    for bad in ("shard-000000.tar\n", "shard-١٢٣٤٥٦.tar"):
        with pytest.raises(InvalidInput):
            keys.shard("faces", 1, bad)
        with pytest.raises(mf.ManifestError):
            mf.validate_key(bad.replace(".", "-"))
    with pytest.raises(InvalidInput):
        keys.private("faces", 1, "record.json\n")
    assert keys.parse_version_key("datasets/faces/v12/upload/shards/shard-000000.tar") == (
        "faces", 12, "upload/shards/shard-000000.tar")
    assert keys.parse_version_key("datasets/faces/v١/x") is None


def test_publication_names():
    assert names.publication("publications/gender-api") == "gender-api"
    for bad in ("", "publications/", "publications/a/b", "publication/gender-api", "publications/Gender",
                "publications/gender-api\n"):
        with pytest.raises(InvalidInput, match="^name: "):
            names.publication(bad)
