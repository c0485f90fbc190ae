"""`umbra up`, `umbra status`, `umbra down` as a user runs them, and `buf curl` (a gRPC client we did not
write) calling a method of every service through server reflection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import free_port
from umbra.client.layout import SERVICES, port_env

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
pytestmark = pytest.mark.slow


def umbra(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "umbra.cli.main", *args], env=env, capture_output=True,
                            text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("umbra-home")
    env = dict(os.environ, UMBRA_HOME=str(home), UMBRA_GRACE_SECONDS="5")
    for service in SERVICES:
        env[port_env(service)] = str(free_port())
    up = umbra("up", env=env)
    yield env, home, up.stdout
    umbra("down", env=env, check=False)


def test_up_starts_every_service_serving(stack):
    env, home, up_output = stack
    for service in SERVICES:
        assert f"{service}" in up_output and "SERVING" in up_output
    status = umbra("status", env=env)
    lines = [line for line in status.stdout.splitlines()[1:] if line.strip()]
    assert len(lines) == len(SERVICES) and all("SERVING" in line for line in lines)
    secrets_dir = home / "secrets"
    assert oct((secrets_dir / "admin-key").stat().st_mode & 0o777) == "0o600"
    assert (home / "logs" / "training.log").exists()


def test_buf_curl_calls_every_service_through_reflection(stack):
    assert BUF.exists(), f"{BUF} is missing: run `make tools` (npm ci) first"
    env, home, _ = stack
    service_token = (home / "secrets" / "service-token").read_text().strip()
    admin_key = (home / "secrets" / "admin-key").read_text().strip()
    for service in SERVICES:
        target = f"http://127.0.0.1:{env[port_env(service)]}"
        listed = subprocess.run([str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                                 "--list-methods", target], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "google.longrunning.Operations/ListOperations" in listed.stdout
        credential = admin_key if service == "coordinator" else service_token
        called = subprocess.run([str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                                 "-H", f"authorization: Bearer {credential}", "--data", '{"pageSize": 5}',
                                 f"{target}/google.longrunning.Operations/ListOperations"],
                                capture_output=True, text=True, timeout=60)
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout or "{}") == {}  # no operations yet: an empty, successful answer
        # And a method of the service's own contract, through the same client: a built one answers (an empty
        # list, or a refusal of the empty request naming the field), a method not built yet says so.
        built = {"coordinator": "umbra.coordinator.v1.TenantService/ListTenants",
                 "training": "umbra.training.v1.TrainingService/ListModelVersions"}
        refused = {"distortion": "copies: is 0", "anonymizer": "dataset.dataset: must look like",
                   "unlearning": "model: needs model"}
        own = built.get(service) or [m for m in listed.stdout.split() if m.startswith("umbra.")][0]
        answer = subprocess.run([str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                                 "-H", f"authorization: Bearer {credential}", "-H", "x-umbra-tenant: acme",
                                 f"{target}/{own}"], capture_output=True, text=True, timeout=60)
        if service in built:
            assert answer.returncode == 0 and json.loads(answer.stdout or "{}") == {}, answer.stderr
        elif service in refused:
            assert answer.returncode != 0 and "invalid_argument" in answer.stderr
            assert refused[service] in answer.stderr
        else:
            assert answer.returncode != 0 and "unimplemented" in answer.stdout + answer.stderr


@pytest.mark.timeout(1500)  # 11 `umbra` calls of at most 120 s each
def test_tenant_and_dataset_commands(stack, tmp_path):
    from umbra.dataset import synthetic

    env, home, _ = stack
    env = dict(env, UMBRA_ENDPOINT=f"127.0.0.1:{env[port_env('coordinator')]}")
    key_file = tmp_path / "acme.key"
    created = umbra("tenants", "create", "acme", "--key-file", str(key_file), env=env)
    assert "tenants/acme created" in created.stdout and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert "tenants/acme" in umbra("tenants", "list", env=env).stdout
    tenant_env = dict(env, UMBRA_API_KEY=key_file.read_text().strip())
    faces = synthetic.write_folder(tmp_path / "faces", 12, size=32, seed=1)
    uploaded = umbra("datasets", "upload", str(faces), "--dataset", "faces", "--image-size", "32", env=tenant_env)
    assert "datasets/faces/versions/1 committed: 12 images" in uploaded.stdout
    assert "datasets/faces" in umbra("datasets", "list", env=tenant_env).stdout
    shown = json.loads(umbra("datasets", "show", "faces", "--version", "1", env=tenant_env).stdout)
    assert shown["state"] == "STATE_COMMITTED" and shown["sampleCount"] == "12"
    umbra("datasets", "export", "faces", str(tmp_path / "back"), "--version", "1", env=tenant_env)
    assert len(list((tmp_path / "back" / "images").iterdir())) == 12
    (faces / "images" / "synth-000003.png").write_text("not a png")
    bad = umbra("datasets", "upload", str(faces), "--dataset", "faces2", env=tenant_env, check=False)
    assert bad.returncode == 1 and "synth-000003.png" in bad.stderr
    balance = umbra("ledger", "balance", env=tenant_env).stdout
    assert "budget    ε=10  δ=1e-05" in balance and "0 committed, 0 reserved" in balance
    assert umbra("ledger", "entries", "--dataset", "faces", env=tenant_env).stdout == ""
    umbra("datasets", "delete", "faces", env=tenant_env)
    missing = umbra("datasets", "show", "faces", env=tenant_env, check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_down_stops_everything(stack):
    env, home, _ = stack
    down = umbra("down", env=env)
    assert down.stdout.count("stopped") == len(SERVICES)
    status = umbra("status", env=env, check=False)
    assert status.returncode == 1 and status.stdout.count("UNREACHABLE") == len(SERVICES)
    assert not list((home / "run").glob("*.pid"))
