"""Fixtures for the storage tests: a real S3 server once per session, and each backend in turn."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from storage_server import S3Server, docker_available, rgw_env, rgw
from umbra.storage.local import LocalObjectStore


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    if docker_available():
        from testcontainers.minio import MinioContainer

        with MinioContainer() as minio:
            config = minio.get_config()
            yield S3Server(config["endpoint"], config["access_key"], config["secret_key"], "minio (testcontainers)")
        return
    already_running = rgw("status").returncode == 0
    if not already_running:
        started = rgw("start")
        assert started.returncode == 0, f"could not start the S3 server:\n{started.stdout}\n{started.stderr}"
    env = rgw_env()
    try:
        yield S3Server(env["UMBRA_S3_ENDPOINT"], env["UMBRA_S3_ACCESS_KEY"], env["UMBRA_S3_SECRET_KEY"], "ceph-rgw")
    finally:
        if not already_running and not os.environ.get("UMBRA_KEEP_S3"):
            rgw("stop")


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
