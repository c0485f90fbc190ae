"""Fixtures for the storage tests: each backend in turn (the real S3 server is tests/conftest.py's `s3_server`)."""

from __future__ import annotations

import uuid

import pytest

from umbra.storage.local import LocalObjectStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """Each backend in turn: the same tests must pass on both."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return request.getfixturevalue("s3_server").store()


@pytest.fixture
def bucket(store) -> str:
    name = f"umbra-t{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(name)
    return name
