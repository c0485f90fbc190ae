"""A real S3 server for tests: testcontainers' MinIO where a Docker engine runs, otherwise the project's own
Ceph RADOS Gateway (deploy/s3/rgw.sh). The session fixture `s3_server` (tests/conftest.py) runs one through
`running_s3_server`, for tests/integration and tests/e2e alike."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from umbra.runtime.config import StoreConfig
from umbra.storage.s3 import S3ObjectStore

ROOT = Path(__file__).resolve().parents[1]
RGW = ROOT / "deploy" / "s3" / "rgw.sh"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    kind: str  # "minio (testcontainers)" or "ceph-rgw"

    def config(self) -> StoreConfig:
        return StoreConfig(kind="s3", endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key)

    def store(self, **kwargs) -> S3ObjectStore:
        return S3ObjectStore(self.endpoint, self.access_key, self.secret_key, **kwargs)


def docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no Docker"
        return False


def rgw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RGW), *args], capture_output=True, text=True, timeout=600)


def rgw_env() -> dict[str, str]:
    env = {}
    for line in rgw("env").stdout.splitlines():
        name, _, value = line.partition("=")
        env[name.strip()] = value.strip()
    return env


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """A real S3 server while the block runs: MinIO in a container where a Docker engine runs, otherwise the Ceph
    RADOS Gateway, started here and stopped afterwards unless it was already running or UMBRA_KEEP_S3 is set."""
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
