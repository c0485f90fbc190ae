"""What the benchmarks share: the default data, the S3 server, and writing results."""

from __future__ import annotations

import json
import os
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench"
FACE_SAMPLE = ROOT.parent / "shared" / "data" / "utkface64-dev"
RGW = ROOT / "deploy" / "s3" / "rgw.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_data(data: Path | None, scratch: Path, count: int = 3000, size: int = 64) -> tuple[Path, str]:
    """The folder to use and what it is: --data, else the face sample when present, else synthetic faces."""
    if data is not None:
        if not (data / "images").is_dir():
            raise SystemExit(f"--data {data}: expected images/ and labels.csv inside")
        return data, str(data)
    if (FACE_SAMPLE / "images").is_dir():
        return FACE_SAMPLE, "utkface64-dev (3,000 real faces)"
    from umbra.dataset import synthetic

    return synthetic.write_folder(scratch / "synthetic", count, size=size, seed=0), f"{count} synthetic faces"


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """The project's local S3 server (deploy/s3/rgw.sh), started if needed and stopped again if we started it."""
    running = subprocess.run(["bash", str(RGW), "status"], capture_output=True).returncode == 0
    if not running:
        subprocess.run(["bash", str(RGW), "start"], check=True)
    try:
        lines = subprocess.run(["bash", str(RGW), "env"], capture_output=True, text=True, check=True).stdout
        yield dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)
    finally:
        if not running:
            subprocess.run(["bash", str(RGW), "stop"], check=False)


def write_result(name: str, result: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def service_env(home: Path, s3: dict[str, str], services: Sequence[str]) -> dict[str, str]:
    """The environment for services started by a benchmark: a fresh home, free ports, new secrets, the S3 store."""
    env = dict(os.environ, UMBRA_HOME=str(home), UMBRA_SERVICE_TOKEN=secrets.token_urlsafe(24),
               UMBRA_ADMIN_KEY=secrets.token_urlsafe(24), UMBRA_STORE="s3", **s3)
    for name in services:
        env[f"UMBRA_{name.upper()}_PORT"] = str(free_port())
    return env


@contextmanager
def running_services(env: dict[str, str], services: Sequence[str], timeout: float = 120.0) -> Iterator[dict[str, str]]:
    """`umbra serve <name>` for each service, as its own process, until the block ends (SIGTERM); yields each
    one's address once it answers SERVING."""
    from umbra.client import health_of

    home = Path(env["UMBRA_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    procs, targets = {}, {}
    try:
        for name in services:
            log = open(home / f"{name}.log", "ab")
            procs[name] = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", name], env=env,
                                           stdout=log, stderr=subprocess.STDOUT)
            log.close()
            targets[name] = f"127.0.0.1:{env[f'UMBRA_{name.upper()}_PORT']}"
        deadline = time.monotonic() + timeout
        for name, target in targets.items():
            while health_of(target, timeout=0.5) != "SERVING":
                if procs[name].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {home / (name + '.log')}")
                time.sleep(0.2)
        yield targets
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def inference_server(env: dict[str, str], workspace: Path, port: int = 0,
                     tenants: Sequence[str] = ()) -> Iterator[str]:
    """The inference server (a real Triton) serving the publications in the benchmark's object store, only those of
    `tenants` when given; yields its gRPC address.

    The S3 server outlives every run, and nothing withdraws what tests and demos publish: without `tenants` the
    server loads every model left there (20 on the development machine), and with them idle beside it the measured
    model ran at 0.58-0.68 of in-process speed, against 0.95-1.03 for a server holding it alone (side by side)."""
    port = port or free_port()
    Path(env["UMBRA_HOME"]).mkdir(parents=True, exist_ok=True)
    log = open(Path(env["UMBRA_HOME"]) / "inference.log", "ab")
    scope = [arg for tenant in tenants for arg in ("--tenant", tenant)]
    proc = subprocess.Popen([sys.executable, "-m", "umbra.inference.triton", "--store", *scope, "--grpc-port",
                             str(port), "--poll-seconds", "0.5", "--workspace", str(workspace)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def create_tenant(coordinator: str, admin_key: str, *, budget: tuple[float, float] | None = None) -> tuple[str, str]:
    """A new tenant on the coordinator, with a privacy budget (epsilon, delta) or the default: (tenant id, API key)."""
    from umbra.client.channel import open_channel
    from umbra.common.v1 import privacy_pb2
    from umbra.coordinator.v1 import tenant_service_pb2, tenant_service_pb2_grpc

    tenant = f"bench-{secrets.token_hex(3)}"
    stub = tenant_service_pb2_grpc.TenantServiceStub(open_channel(coordinator, admin_key))
    request = tenant_service_pb2.CreateTenantRequest(tenant_id=tenant)
    if budget is not None:
        request.tenant.privacy_budget.CopyFrom(privacy_pb2.PrivacyBudget(epsilon=budget[0], delta=budget[1]))
    key = stub.CreateTenant(request, timeout=30).api_key_secret
    return tenant, key


def subset_folder(folder: Path, count: int, scratch: Path) -> Path:
    """The first `count` labelled images of a folder, copied into `scratch` (a temporary folder: uploads refuse links
    that point out of the folder they upload)."""
    lines = (folder / "labels.csv").read_text().splitlines()
    out = scratch / f"first-{count}"
    (out / "images").mkdir(parents=True)
    (out / "labels.csv").write_text("\n".join(lines[:count + 1]) + "\n")
    for line in lines[1:count + 1]:
        name = line.split(",", 1)[0]
        shutil.copyfile(folder / "images" / name, out / "images" / name)
    return out
