"""AIP-158 pagination: page sizes and opaque page tokens, the same for every List."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from umbra.runtime.errors import InvalidInput

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_CHARS = 1024  # ours are far shorter; a longer one is not ours, and is not worth parsing


def page_size(value: int, field: str = "page_size") -> int:
    """0 means the default; above the maximum is coerced down (AIP-158); negative is an error."""
    if value < 0:
        raise InvalidInput(field, "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _query_hash(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def encode_token(position: str, query: str) -> str:
    """A token that resumes after `position` for the same `query` (the request minus its page fields)."""
    raw = json.dumps({"after": position, "query": _query_hash(query)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query: str, field: str = "page_token") -> str | None:
    """The position a token resumes after, or None for the first page."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidInput(field, "is not a token this service issued")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        position, query_hash = data["after"], data["query"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidInput(field, "is not a token this service issued") from None
    if not isinstance(position, str) or query_hash != _query_hash(query):
        raise InvalidInput(field, "belongs to a different query; repeat the request that returned it")
    return position
