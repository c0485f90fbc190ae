"""A real S3 server for tests: testcontainers' MinIO where a Docker engine runs, otherwise the project's own
Ceph RADOS Gateway (deploy/s3/rgw.sh). Fixtures are in integration/conftest.py."""

from __future__ import annotations

import subprocess
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
