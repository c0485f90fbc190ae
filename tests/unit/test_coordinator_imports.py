"""The coordinator's process imports neither torch nor dlib (nor diffusers, torchvision, opacus): it runs on a small
image and starts fast. pyproject.toml's import-linter contract checks the imports statically; this checks the
process itself: a fresh interpreter imports every coordinator module and `umbra serve`'s entry, builds and starts the
coordinator, creates a tenant, stops, and then looks at sys.modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "dlib", "diffusers", "torchvision", "opacus")

_SCRIPT = """
import importlib, json, pkgutil, sys, tempfile
from pathlib import Path

import support
import umbra.services.coordinator as coordinator
from umbra.runtime.server import create_server
from umbra.services import main
from umbra.services.registry import spec

for module in pkgutil.walk_packages(coordinator.__path__, "umbra.services.coordinator."):
    if ".migrations" not in module.name:
        importlib.import_module(module.name)
with tempfile.TemporaryDirectory() as home:
    running = create_server(support.config_for("coordinator", Path(home)), spec("coordinator")).start()
    try:
        support.create_tenant(f"127.0.0.1:{running.port}", "acme")
    finally:
        running.stop(0)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_coordinator_process_imports_neither_torch_nor_dlib():
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMBRA_")}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=TESTS, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(TESTS)})
    assert done.returncode == 0, done.stderr
    imported = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "umbra" in imported and "grpc" in imported  # it did import and run the coordinator
    assert not imported & set(FORBIDDEN), sorted(imported & set(FORBIDDEN))
