import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbra.runtime import pagination
from umbra.runtime.errors import InvalidInput


@given(position=st.text(max_size=128), query=st.text())  # positions are resource ids: short
def test_token_round_trip(position, query):
    assert pagination.decode_token(pagination.encode_token(position, query), query) == position


@given(position=st.text(max_size=128), query=st.text(), other=st.text())
def test_token_is_bound_to_its_query(position, query, other):
    token = pagination.encode_token(position, query)
    if other != query:
        with pytest.raises(InvalidInput, match="page_token"):
            pagination.decode_token(token, other)


@given(st.text())
def test_garbage_tokens_are_invalid_input_never_a_crash(token):
    try:
        pagination.decode_token(token, "q")
    except InvalidInput as exc:
        assert exc.field == "page_token"


def test_page_size():
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE
    assert pagination.page_size(10**6) == pagination.MAX_PAGE_SIZE
    with pytest.raises(InvalidInput, match="page_size"):
        pagination.page_size(-1)


def test_overlong_tokens_are_refused_unparsed():
    with pytest.raises(InvalidInput, match="page_token"):
        pagination.decode_token("A" * (pagination.MAX_TOKEN_CHARS + 1), "q")


def test_page_walks_every_item_once_in_order():
    items = [f"k{i:03d}" for i in range(23)]

    def fetch(after, limit):
        return [k for k in items if k > (after or "")][:limit]

    class Request:
        page_size, page_token = 5, ""

    seen, request = [], Request()
    while True:
        page, token = pagination.page(request, "q", fetch, lambda k: k)
        seen.extend(page)
        if not token:
            break
        request.page_token = token
    assert seen == items


def test_page_refuses_a_token_of_another_query():
    class Request:
        page_size, page_token = 1, ""

    _, token = pagination.page(Request(), "q", lambda after, limit: ["a", "b"][:limit], lambda k: k)
    Request.page_token = token
    with pytest.raises(InvalidInput, match="page_token"):
        pagination.page(Request(), "other", lambda after, limit: [], lambda k: k)
