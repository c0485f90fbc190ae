"""The publications the inference server serves (umbra.inference.publications), without a server: who may take a
served name, retries by request_id, withdrawal, and listing one tenant's."""

from __future__ import annotations

import json

import pytest

from support import write_extractor
from umbra.inference import publications
from umbra.runtime.errors import AlreadyExists, NotFound
from umbra.storage.local import LocalObjectStore


@pytest.fixture
def store(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    for tenant in ("acme", "globex"):
        store.ensure_bucket(f"umbra-{tenant}")
    write_extractor(store, "umbra-acme", "gender")
    write_extractor(store, "umbra-acme", "gender")
    return store


def test_a_name_is_taken_by_one_version_and_retries_pass(store):
    first = publications.publish(store, "acme", "api", "gender", 1, request_id="r1", field="publication_id")
    assert first.triton_name == "acme.api" and first.request_id == "r1" and first.create_time > 0
    assert publications.publish(store, "acme", "api", "gender", 1, request_id="r1") == first  # the retry
    assert publications.publish(store, "acme", "api", "gender", 1) == first  # ExportModelVersion: same version
    for request_id in ("r2", ""):
        with pytest.raises(AlreadyExists, match="already published") as err:
            publications.publish(store, "acme", "api", "gender", 1, request_id=request_id, field="publication_id")
        assert err.value.metadata == {"field": "publication_id"}
    with pytest.raises(AlreadyExists, match="models/gender/versions/1"):
        publications.publish(store, "acme", "api", "gender", 2)
    with pytest.raises(NotFound):
        publications.publish(store, "acme", "other", "gender", 3)
    with pytest.raises(NotFound):  # another tenant's model
        publications.publish(store, "globex", "api", "gender", 1)


def test_withdrawal_frees_the_name_and_a_retry_passes(store):
    publications.publish(store, "acme", "api", "gender", 1, request_id="r1")
    publications.record_failure(store, publications.get(store, "acme", "api"), "boom")
    assert publications.withdraw(store, "acme", "api", request_id="w1").version == 1
    assert publications.withdraw(store, "acme", "api", request_id="w1") is None  # the retry
    with pytest.raises(NotFound):
        publications.withdraw(store, "acme", "api", request_id="w2")
    with pytest.raises(NotFound):
        publications.get(store, "acme", "api")
    again = publications.publish(store, "acme", "api", "gender", 2, request_id="r2")
    assert again.version == 2 and publications.failure(store, again) is None  # the old failure went with it


def test_listing_is_per_tenant_and_pages(store):
    write_extractor(store, "umbra-globex", "gender")
    for name in ("c-api", "a-api", "b-api"):
        publications.publish(store, "acme", name, "gender", 1)
    publications.publish(store, "globex", "a-api", "gender", 1)
    assert [p.served_model_name for p in publications.list_tenant(store, "acme", None, 10)] == \
        ["a-api", "b-api", "c-api"]
    assert [p.served_model_name for p in publications.list_tenant(store, "acme", "a-api", 1)] == ["b-api"]
    assert [p.tenant for p in publications.list_tenant(store, "globex", None, 10)] == ["globex"]
    assert [p.triton_name for p, _ in publications.list_all(store)] == \
        ["acme.a-api", "acme.b-api", "acme.c-api", "globex.a-api"]


def test_entries_written_before_create_time_and_request_id_still_read(store):
    store.ensure_bucket(publications.SERVING_BUCKET)
    store.put(publications.SERVING_BUCKET, "entries/acme.old.json",
              json.dumps({"tenant": "acme", "served_model_name": "old", "model": "gender", "version": 1}).encode())
    old = publications.get(store, "acme", "old")
    assert (old.create_time, old.request_id) == (0.0, "")
    assert publications.states(store, "", [old]) == [publications.LOADING]  # no inference server to ask
