"""Fixtures shared by the test levels (helpers live in support.py; the S3 server in storage_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import Served, start_service
from umbra.client.layout import SERVICES


@pytest.fixture(params=SERVICES)
def any_service(request, tmp_path) -> Iterator[Served]:
    """Each of the five services in turn, started in this process on a free port."""
    served = start_service(request.param, tmp_path)
    yield served
    served.running.stop(grace=0)


@pytest.fixture(scope="module")
def all_services(tmp_path_factory) -> Iterator[dict[str, Served]]:
    """All five services at once, for the tests that walk every RPC."""
    root = tmp_path_factory.mktemp("services")
    served = {name: start_service(name, root) for name in SERVICES}
    yield served
    for s in served.values():
        s.running.stop(grace=0)


@pytest.fixture(scope="session")
def s3_server() -> Iterator:
    """A real S3 server once per session (storage_server.running_s3_server), for tests/integration and tests/e2e;
    started only by a test that asks for it."""
    from storage_server import running_s3_server

    with running_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator:
    """A real PostgreSQL server once per session (postgres_server.running_postgres, deploy/postgres/pg.sh); each
    test takes its own database with postgres_server.database(name). Started only by a test that asks for it."""
    from postgres_server import running_postgres

    with running_postgres() as server:
        yield server
