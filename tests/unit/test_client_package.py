"""The SDK and the CLI stay installable and importable without torch or the server code."""

import subprocess
import sys
import tomllib
from pathlib import Path

CLIENTS = Path(__file__).resolve().parents[2] / "clients"


def test_client_dependencies_leave_out_torch_and_the_server():
    deps = tomllib.loads((CLIENTS / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower() for d in deps}
    assert not names & {"torch", "umbra", "diffusers", "opacus"}


def test_importing_the_sdk_and_cli_loads_no_torch_and_no_server_code():
    code = ("import sys, umbra.client, umbra.client.inference, umbra.cli.main, umbra.cli.local, umbra.cli.models; "
            "umbra.client.protos.load_all(); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('umbra.runtime', 'umbra.services'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_names_an_unknown_service():
    result = subprocess.run([sys.executable, "-m", "umbra.cli.main", "status", "billing"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "unknown service billing" in result.stderr
