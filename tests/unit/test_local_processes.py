"""`umbra up` / `umbra down` and their pid files: a pid counts only while the very process it was written for
runs (not after it died, not once it is a zombie, not when another process got the pid), `up` starts the
service over a stale pid file, and `down` signals nothing but the service. No real service is started here:
`up` launches `sleep` instead (tests/service/test_files_private.py starts a real one)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from umbra.cli import local

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="pid identities need Linux /proc")


def start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, read independently of the code under test."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def pid_file(home: Path, service: str = "training") -> Path:
    return home / "run" / f"{service}.pid"


def write_pid_file(home: Path, content: str, service: str = "training") -> None:
    pid_file(home, service).write_text(content)


def zombie() -> subprocess.Popen:
    """A child that has exited and that nobody has waited for yet."""
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while state(proc.pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("UMBRA_HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    return tmp_path


@pytest.fixture
def unrelated():
    """A live process that has nothing to do with Umbra (the one a reused pid now belongs to)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_pid_file_names_the_process_and_down_stops_it(home, capsys):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        local._write_pid_file(home, "training", proc.pid)
        assert json.loads(pid_file(home).read_text()) == {"pid": proc.pid, "started": start_time(proc.pid)}
        assert pid_file(home).stat().st_mode & 0o777 == 0o600
        assert [p.name for p in (home / "run").iterdir()] == ["training.pid"]  # no temporary file left
        assert local._pid(home, "training") == proc.pid
        assert local.down(["training"]) == 0
        proc.wait(timeout=10)  # down has collected its exit status already (it is down's child here)
        assert not Path(f"/proc/{proc.pid}").exists()
        assert "training     stopped" in capsys.readouterr().out and not pid_file(home).exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_process_is_not_running(home):
    proc = zombie()
    local._write_pid_file(home, "training", proc.pid)  # its true identity, as `up` wrote it
    proc.wait()  # now it is gone, as after a crash
    assert local._pid(home, "training") is None
    write_pid_file(home, str(proc.pid))  # the same in an old pid file, just the number
    assert local._pid(home, "training") is None


def test_a_zombie_is_not_running(home):
    proc = zombie()
    try:
        local._write_pid_file(home, "training", proc.pid)
        assert local._pid(home, "training") is None
    finally:
        proc.wait()


def test_a_reused_pid_is_not_running_and_down_leaves_its_process_alone(home, unrelated, capsys):
    write_pid_file(home, json.dumps({"pid": unrelated.pid, "started": start_time(unrelated.pid) - 1}))
    assert local._pid(home, "training") is None
    assert local.down(["training"]) == 0
    assert "training     not running" in capsys.readouterr().out and not pid_file(home).exists()
    write_pid_file(home, f"{unrelated.pid}\n")  # an old pid file: `sleep` is not `umbra serve training`
    assert local._pid(home, "training") is None
    assert local.down(["training"]) == 0
    time.sleep(0.2)
    assert unrelated.poll() is None and state(unrelated.pid) != "Z"


def test_an_old_pid_file_is_trusted_only_for_the_service_it_runs(home):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "umbra.cli.main", "serve",
                             "training"])
    try:
        for service in ("training", "coordinator"):
            write_pid_file(home, f"{proc.pid}\n", service)
        assert local._pid(home, "training") == proc.pid
        assert local._pid(home, "coordinator") is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("content", ["-1", "0", "", "pid", "true", '{"pid": true}', '{"pid": 1, "started": "x"}',
                                     '{"started": 5}', "[1]"])
def test_a_pid_file_that_names_no_process_is_ignored(home, content):
    write_pid_file(home, content)  # -1 or 0 would make os.kill signal every process the user may signal
    assert local._pid(home, "training") is None


@pytest.mark.parametrize("stale", ["dead", "zombie", "reused"])
def test_up_starts_the_service_over_a_stale_pid_file(home, unrelated, monkeypatch, capsys, stale):
    if stale == "reused":
        write_pid_file(home, json.dumps({"pid": unrelated.pid, "started": start_time(unrelated.pid) - 1}))
    else:
        old = zombie()
        local._write_pid_file(home, "training", old.pid)
        if stale == "dead":
            old.wait()
    (home / "logs").mkdir()
    (home / "logs" / "training.log").write_text("an older log\n")
    (home / "logs" / "training.log").chmod(0o644)
    launched: list[list[str]] = []
    real_popen = subprocess.Popen

    def launch(args, **options):  # the service's command, run as `sleep` (no real service in unit tests)
        launched.append(args)
        return real_popen(["sleep", "60"], stdout=options["stdout"], stderr=options["stderr"])

    monkeypatch.setattr(local.subprocess, "Popen", launch)
    monkeypatch.setattr(local, "health_of", lambda target, timeout: "SERVING")
    assert local.up(["training"]) == 0
    monkeypatch.setattr(local.subprocess, "Popen", real_popen)
    if stale == "zombie":
        old.wait()
    assert "already running" not in capsys.readouterr().out
    assert launched == [[sys.executable, "-m", "umbra.cli.main", "serve", "training"]]
    new = local._pid(home, "training")
    assert new is not None and new != unrelated.pid
    for path in (pid_file(home), home / "logs" / "training.log"):  # the log made 0644 by an older `up` too
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert local.down(["training"]) == 0
    assert "training     stopped" in capsys.readouterr().out
    assert unrelated.poll() is None and local._pid(home, "training") is None
