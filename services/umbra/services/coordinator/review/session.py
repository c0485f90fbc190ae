"""The review page's session cookie: the tenant's API key, encrypted, with an expiry and a CSRF token.

The cookie is a Fernet token (AES-128-CBC and HMAC-SHA256; cryptography's Fernet): nobody without the page's
secret can read the key out of it or change a byte of it, and Fernet's own timestamp bounds its life (8 hours).
The secret is UMBRA_REVIEW_SECRET, or derived from the service token with HKDF so that every coordinator replica
reads every replica's cookies; with neither, a random one (sessions then end with the process).

The sign-in form, which has no session yet, carries a token of its own (an encrypted timestamp, valid an hour), so
that every POST the page takes carries a token a cross-site form cannot know.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

COOKIE = "umbra_review"
LIFETIME_SECONDS = 8 * 3600
SIGNIN_TOKEN_SECONDS = 3600
_SESSION, _SIGNIN = "session", "signin"


def fernet_key(review_secret: str, service_token: str) -> bytes:
    """The Fernet key of the page's cookies: HKDF-SHA256 of UMBRA_REVIEW_SECRET or, when unset, of the service
    token (each with its own label, so the two never give the same key); random (with a warning) with neither."""
    if review_secret:
        material, label = review_secret.encode(), b"umbra review page: UMBRA_REVIEW_SECRET"
    elif service_token:
        material, label = service_token.encode(), b"umbra review page: derived from UMBRA_SERVICE_TOKEN"
    else:
        log.warning("the review page has neither UMBRA_REVIEW_SECRET nor a service token: its sessions use a random "
                    "key and end when this process stops (another replica cannot read them)")
        material, label = secrets.token_bytes(32), b"umbra review page: random"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(material)
    return base64.urlsafe_b64encode(key)


@dataclass(frozen=True)
class Session:
    """What a valid cookie holds."""

    api_key: str = field(repr=False)
    csrf: str = field(repr=False)
    expires: float

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf.encode())


class Sessions:
    """Makes and reads the page's cookies. `clock` is for tests."""

    def __init__(self, key: bytes, *, lifetime: int = LIFETIME_SECONDS, clock: Callable[[], float] = time.time):
        self._fernet = Fernet(key)
        self.lifetime = lifetime
        self._clock = clock

    def _seal(self, kind: str, payload: dict) -> str:
        data = json.dumps({"kind": kind, **payload}, separators=(",", ":")).encode()
        return self._fernet.encrypt_at_time(data, int(self._clock())).decode()

    def _open(self, kind: str, token: str | None, ttl: int) -> dict | None:
        if not token:
            return None
        try:
            data = json.loads(self._fernet.decrypt_at_time(token.encode(), ttl, int(self._clock())))
        except (InvalidToken, ValueError, TypeError):  # tampered, expired, another key, not a token at all
            return None
        return data if isinstance(data, dict) and data.get("kind") == kind else None

    def create(self, api_key: str) -> tuple[str, Session]:
        """A new session for `api_key`: (the cookie's value, the session)."""
        session = Session(api_key=api_key, csrf=secrets.token_urlsafe(32), expires=self._clock() + self.lifetime)
        return self._seal(_SESSION, {"key": api_key, "csrf": session.csrf}), session

    def read(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None when it is missing, tampered with, expired or not ours."""
        data = self._open(_SESSION, cookie, self.lifetime)
        if data is None or not isinstance(data.get("key"), str) or not isinstance(data.get("csrf"), str):
            return None
        issued = self._fernet.extract_timestamp(cookie.encode())
        return Session(api_key=data["key"], csrf=data["csrf"], expires=issued + self.lifetime)

    def signin_token(self) -> str:
        """The sign-in form's token (no session yet): an encrypted nonce, valid an hour."""
        return self._seal(_SIGNIN, {"nonce": secrets.token_urlsafe(16)})

    def signin_token_ok(self, token: str | None) -> bool:
        return self._open(_SIGNIN, token, SIGNIN_TOKEN_SECONDS) is not None
