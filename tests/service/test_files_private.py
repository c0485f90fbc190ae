"""What `umbra up` and `umbra serve` leave on disk is private to the user (files 0600, folders 0700), and `up`
starts a service whose pid file is stale instead of calling it running. A real coordinator, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import free_port
from umbra.client.layout import port_env

pytestmark = pytest.mark.slow


def umbra(*args: str, env: dict) -> str:
    # umask 022, the usual default: the files must be private because Umbra makes them so, not by luck
    result = subprocess.run([sys.executable, "-m", "umbra.cli.main", *args], env=env, capture_output=True,
                            text=True, timeout=120, umask=0o022)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="pid identities need Linux /proc")
def test_up_over_a_stale_pid_file_starts_a_service_whose_files_are_private(tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, UMBRA_HOME=str(home), UMBRA_GRACE_SECONDS="5", **{port_env("coordinator"): str(free_port())})
    unrelated = subprocess.Popen(["sleep", "120"])  # the process that got the crashed coordinator's pid
    try:
        (home / "run").mkdir(parents=True, mode=0o700)
        (home / "run" / "coordinator.pid").write_text(json.dumps({"pid": unrelated.pid, "started": 1}))
        up = umbra("up", "coordinator", env=env)
        assert "already running" not in up and "SERVING" in up
        pid = json.loads((home / "run" / "coordinator.pid").read_text())["pid"]
        assert pid != unrelated.pid
        try:
            data = home / "coordinator"
            private = [home / "run" / "coordinator.pid", home / "logs" / "coordinator.log",
                       data / "coordinator.sqlite3", *data.rglob("*")]
            assert data / "coordinator.sqlite3" in private[3:]
            for path in private:
                expected = 0o700 if path.is_dir() else 0o600
                assert path.stat().st_mode & 0o777 == expected, path
            for folder in (home / "logs", data):
                assert folder.stat().st_mode & 0o777 == 0o700, folder
        finally:
            down = umbra("down", "coordinator", env=env)
        assert "coordinator  stopped" in down
        assert unrelated.poll() is None  # down signalled the coordinator only
    finally:
        unrelated.kill()
        unrelated.wait()
