"""AIP-158 pagination: page sizes and opaque page tokens, the same for every List."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from umbra.runtime.errors import InvalidInput

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
T = TypeVar("T")
MAX_TOKEN_CHARS = 1024  # ours are far shorter; a longer one is not ours, and is not worth parsing
MAX_POSITION = 2**31 - 1  # a numeric position is a version number (int32)


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


def integer_position(after: str | None, field: str = "page_token", high: int = MAX_POSITION) -> int:
    """The number a List's token resumes after (0 for the first page): ASCII digits only, at most `high`. A token
    is not signed, so anyone can forge one: a huge number, or digits of another script that int() would take,
    is refused like any other token this service did not issue (never an overflow in the database)."""
    if not after:
        return 0
    if not (after.isascii() and after.isdigit() and len(after) <= len(str(high)) and int(after) <= high):
        raise InvalidInput(field, "is not a token this service issued")
    return int(after)


def page(request, query: str, fetch: Callable[[str | None, int], Sequence[T]], position: Callable[[T], str]
         ) -> tuple[list[T], str]:
    """One page of a List (AIP-158) and the token of the next ("" on the last page).

    `request` carries `page_size` and `page_token`; `query` is what the token is bound to (the request minus its
    page fields); `fetch(after, limit)` returns up to `limit` items in order, starting after the position `after`
    (None for the first page); `position(item)` is where the next page resumes after that item.

        items, token = pagination.page(request, "datasets", lambda after, limit: db.datasets(tenant, after, limit),
                                       lambda row: row.id)
    """
    size = page_size(request.page_size)
    items = list(fetch(decode_token(request.page_token, query), size + 1))
    token = encode_token(position(items[size - 1]), query) if len(items) > size else ""
    return items[:size], token
