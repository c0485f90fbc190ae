"""The review page's session cookie (umbra.services.coordinator.review.session): the API key inside cannot be read,
changed or used past its expiry, and the CSRF token compares in constant time."""

from __future__ import annotations

import base64

import pytest

from umbra.runtime.config import ConfigError, ServiceConfig
from umbra.services.coordinator.review.session import LIFETIME_SECONDS, Sessions, fernet_key

KEY = "umbra_tenant_key_0123456789abcdef"
TOKEN = "test-service-token-0123456789"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def sessions(clock: Clock | None = None, secret: str = "", token: str = TOKEN) -> Sessions:
    return Sessions(fernet_key(secret, token), clock=clock or Clock())


def test_a_cookie_reads_back_its_key_and_csrf_token():
    codec = sessions()
    cookie, made = codec.create(KEY)
    read = codec.read(cookie)
    assert read is not None and read.api_key == KEY and read.csrf == made.csrf
    assert read.csrf_ok(made.csrf) and not read.csrf_ok("") and not read.csrf_ok(None)
    assert not read.csrf_ok(made.csrf[:-1] + ("A" if made.csrf[-1] != "A" else "B"))
    assert KEY not in repr(read) and made.csrf not in repr(read)


def test_the_key_cannot_be_read_from_the_cookie():
    cookie, made = sessions().create(KEY)
    raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
    for needle in (KEY.encode(), made.csrf.encode(), b"umbra_tenant", b'"key"'):
        assert needle not in raw and needle.decode() not in cookie


@pytest.mark.parametrize("position", [0, 10, 40, -5, -1])
def test_a_tampered_cookie_is_refused(position):
    codec = sessions()
    cookie, _ = codec.create(KEY)
    raw = bytearray(base64.urlsafe_b64decode(cookie))
    raw[position] ^= 0x01
    assert codec.read(base64.urlsafe_b64encode(bytes(raw)).decode()) is None
    assert codec.read(cookie[:-4]) is None and codec.read("") is None and codec.read(None) is None
    assert codec.read("not a cookie") is None


def test_an_expired_cookie_is_refused():
    clock = Clock()
    codec = sessions(clock)
    cookie, made = codec.create(KEY)
    assert made.expires == clock.now + LIFETIME_SECONDS
    clock.now += LIFETIME_SECONDS - 1
    assert codec.read(cookie) is not None
    clock.now += 2
    assert codec.read(cookie) is None


def test_another_secret_cannot_read_the_cookie_and_replicas_sharing_the_token_can():
    cookie, _ = sessions().create(KEY)
    assert sessions(token="another-service-token-000").read(cookie) is None
    assert sessions(secret="a-review-secret-of-32-characters").read(cookie) is None
    assert sessions().read(cookie) is not None  # another replica: the same token, the same derived key
    assert fernet_key("", TOKEN) != fernet_key(TOKEN, "")  # the secret and the token are labelled apart
    assert fernet_key("", "") != fernet_key("", "")  # neither: random


def test_the_sign_in_token_is_not_a_session_and_a_session_is_not_a_sign_in_token():
    codec = sessions()
    token = codec.signin_token()
    assert codec.signin_token_ok(token) and codec.read(token) is None
    cookie, _ = codec.create(KEY)
    assert not codec.signin_token_ok(cookie) and not codec.signin_token_ok("") and not codec.signin_token_ok(None)


def env(**more: str) -> dict[str, str]:
    return {"UMBRA_SERVICE_TOKEN": TOKEN, "UMBRA_ADMIN_KEY": "test-admin-key-0123456789abcdef", **more}


def test_review_settings_from_the_environment():
    config = ServiceConfig.from_env("coordinator", env())
    assert (config.review_port, config.review_secret, config.review_secure_cookies) == (0, "", False)
    config = ServiceConfig.from_env("coordinator", env(UMBRA_REVIEW_PORT="8080", UMBRA_REVIEW_SECURE_COOKIES="1",
                                                       UMBRA_REVIEW_SECRET="s" * 32))
    assert (config.review_port, config.review_secure_cookies) == (8080, True)
    assert "s" * 32 not in repr(config)
    for bad, variable in ((dict(UMBRA_REVIEW_PORT="70000"), "UMBRA_REVIEW_PORT"),
                          (dict(UMBRA_REVIEW_PORT="x"), "UMBRA_REVIEW_PORT"),
                          (dict(UMBRA_REVIEW_PORT="50051"), "UMBRA_REVIEW_PORT"),  # the gRPC port
                          (dict(UMBRA_REVIEW_SECRET="short"), "UMBRA_REVIEW_SECRET"),
                          (dict(UMBRA_REVIEW_SECURE_COOKIES="maybe"), "UMBRA_REVIEW_SECURE_COOKIES")):
        with pytest.raises(ConfigError, match=variable):
            ServiceConfig.from_env("coordinator", env(**bad))
