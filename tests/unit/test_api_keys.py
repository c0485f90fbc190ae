import pytest

from umbra.runtime.auth import ApiKeyStore, Principal, TenantAuthenticator
from umbra.runtime.errors import InvalidInput, NotFound, Unauthenticated


def test_keys_are_stored_hashed_and_revocable(tmp_path):
    store = ApiKeyStore(tmp_path / "keys.sqlite3")
    key_id, key = store.issue("acme", "ci")
    assert store.verify(key) == "acme"
    secret = key.split("_", 2)[2]  # umbra_<id>_<secret>
    store.close()
    assert secret.encode() not in (tmp_path / "keys.sqlite3").read_bytes()  # only the hash is kept
    store = ApiKeyStore(tmp_path / "keys.sqlite3")
    assert store.verify(key) == "acme"  # survives a restart
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    with pytest.raises(NotFound):
        store.revoke("other-tenant", key_id)  # a tenant cannot revoke another's key
    store.revoke("acme", key_id)
    assert store.verify(key) is None
    store.revoke("acme", key_id)  # again: still revoked, no error


def test_authenticator(tmp_path):
    store = ApiKeyStore(tmp_path / "keys.sqlite3")
    _, key = store.issue("acme")
    auth = TenantAuthenticator(store, admin_key="admin-key-0123456789")
    assert auth.authenticate({"authorization": f"Bearer {key}"}) == Principal("tenant", "acme")
    assert auth.authenticate({"authorization": "bearer admin-key-0123456789"}) == Principal("admin")
    for metadata in ({}, {"authorization": key}, {"authorization": "Bearer "}, {"authorization": "Bearer nope"}):
        with pytest.raises(Unauthenticated):
            auth.authenticate(metadata)


@pytest.mark.parametrize("tenant", ["", "A", "ab", "-ab", "ab-", "a" * 41, "a/b", "a..b"])
def test_tenant_ids_are_validated(tmp_path, tenant):
    with pytest.raises(InvalidInput, match="tenant"):
        ApiKeyStore(tmp_path / "keys.sqlite3").issue(tenant)
