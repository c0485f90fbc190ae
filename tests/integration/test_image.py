"""The container image (deploy/Dockerfile) builds and runs (issue 26).

deploy/image/build.sh builds it with Debian's buildah on a base made from Debian's packages (deploy/image/base.sh),
or finds it already built for the same inputs (a hash of the Dockerfile, the project files and the base): the first
run on a machine takes minutes, later ones seconds. The coordinator then runs from the image's own file system
(`buildah run`, chroot isolation, the host's network) with its secrets given at run time, and answers over gRPC."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support
from umbra.client import health_of

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "image" / "build.sh"
BUILDAH = REPO / "deploy" / "image" / "buildah.sh"
UID = 10001
SECRET_VARIABLES = ("UMBRA_SERVICE_TOKEN", "UMBRA_ADMIN_KEY", "UMBRA_S3_ACCESS_KEY", "UMBRA_S3_SECRET_KEY",
                    "UMBRA_DATABASE_URL")
SECRET_ASSIGNED = re.compile(rb"(UMBRA_SERVICE_TOKEN|UMBRA_ADMIN_KEY)\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{16,}")
SECRET_FILES = {"service-token", "admin-key", "credentials.env", "s3-user.env"}


def buildah(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BUILDAH), *args], capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def image() -> str:
    """The image's name (built now unless already built for these inputs)."""
    done = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, f"deploy/image/build.sh failed:\n{done.stderr[-6000:]}"
    sys.stderr.write(done.stderr)  # what was built and how long it took (shown with -s or -rP)
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def container(image: str):
    """A working container of the image (one for the module: each costs a copy of the image's files), and what
    its files held before anything ran in it. Removed afterwards; the image is left as it is."""
    name = f"umbra-test-{os.getpid()}-{time.time_ns()}"
    buildah("from", "--quiet", "--pull=never", "--name", name, image)
    try:
        root = Path(buildah("mount", name).stdout.strip())
        try:
            files = scan(root)
        finally:
            buildah("umount", name, check=False)
        yield name, files
    finally:
        buildah("rm", name, check=False)


def scan(root: Path) -> dict:
    """What of the image's files the tests check, found before the container ran anything."""
    found: dict = {"secret_dirs": [], "secret_files": [], "secret_assigned": []}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path("/", Path(dirpath).relative_to(root))
        found["secret_dirs"] += [str(rel / d) for d in dirnames if d == "secrets" and rel.parts[1:2] != ("usr",)]
        found["secret_files"] += [str(rel / f) for f in SECRET_FILES & set(filenames)]
    # The application's own files, the venv's scripts, /etc and home folders: no secret assigned in any.
    for top in ("app", "data", "etc", "root", "home", "opt/umbra/bin"):
        for path in (root / top).rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 4 * 1024 * 1024:
                if SECRET_ASSIGNED.search(path.read_bytes()):
                    found["secret_assigned"].append(f"/{path.relative_to(root)}")
    data = root / "data"
    found["data"] = (data.is_dir(), data.stat().st_uid if data.exists() else None,
                     sorted(p.name for p in data.iterdir()) if data.is_dir() else None)
    # What the build mounted for pip (the torch wheel, the CA bundle) is not in the image.
    mounts = root / "run" / "umbra-build"
    found["build_mounts"] = sorted(str(p) for p in mounts.rglob("*") if p.is_file()) if mounts.exists() else []
    found["wheels"] = sorted(str(p) for p in (root / "app").rglob("*.whl"))
    return found


def test_image_runs_as_10001_and_its_configuration_holds_no_secret(image: str):
    info = json.loads(buildah("inspect", "--type", "image", image).stdout)
    config = info["OCIv1"]["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["umbra", "serve"] and config["Cmd"] == ["coordinator"]
    env = dict(item.split("=", 1) for item in config.get("Env", []))
    assert env["UMBRA_HOME"] == "/data"
    assert not set(SECRET_VARIABLES) & set(env), "a secret is set in the image's environment"
    # Nothing of the build's secrets is in its history or labels either.
    history = json.dumps(info["OCIv1"].get("history", [])) + json.dumps(config.get("Labels", {}))
    for name in SECRET_VARIABLES:
        assert f"{name}=" not in history


def test_image_files_hold_no_secret(container):
    _, files = container
    assert files["secret_dirs"] == [] and files["secret_files"] == [] and files["secret_assigned"] == []
    assert files["data"] == (True, UID, []), "/data: a folder of uid 10001, empty"
    assert files["build_mounts"] == [] and files["wheels"] == []


def test_coordinator_refuses_to_start_without_secrets_given_at_run_time(container):
    name, _ = container
    done = buildah("run", "--net", "host", name, "--", "umbra", "serve", "coordinator", check=False,
                   timeout=120)
    assert done.returncode != 0
    assert "UMBRA_SERVICE_TOKEN" in done.stdout + done.stderr


def test_coordinator_from_the_image_serves_health_over_grpc(container, tmp_path: Path):
    name, _ = container
    assert buildah("run", name, "--", "id", "-u").stdout.strip() == str(UID)
    port = support.free_port()
    target = f"127.0.0.1:{port}"
    log = tmp_path / "coordinator.log"
    proc = subprocess.Popen(
        [str(BUILDAH), "run", "--net", "host",
         "-e", f"UMBRA_SERVICE_TOKEN={support.SERVICE_TOKEN}", "-e", f"UMBRA_ADMIN_KEY={support.ADMIN_KEY}",
         "-e", "UMBRA_HOST=127.0.0.1", "-e", f"UMBRA_COORDINATOR_PORT={port}", "-e", "UMBRA_GRACE_SECONDS=2",
         name, "--", "umbra", "serve", "coordinator"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while health_of(target, timeout=0.5) != "SERVING":
            assert proc.poll() is None, f"the coordinator exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no SERVING within 120 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.3)
        # The admin key given at run time works, and the coordinator keeps its state in /data as uid 10001.
        assert support.create_tenant(target, "acme")
        root = Path(buildah("mount", name).stdout.strip())
        try:
            state = [p for p in (root / "data").rglob("*") if p.is_file()]
            assert state and all(p.stat().st_uid == UID for p in state)
        finally:
            buildah("umount", name, check=False)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert health_of(target, timeout=0.5) != "SERVING", "the coordinator still runs after its stop"
