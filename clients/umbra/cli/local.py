"""`umbra up`, `umbra down`, `umbra status`: every service as its own process on this machine.

State lives under $UMBRA_HOME (default ./.umbra): `secrets/` (the service token and admin key, mode 0600,
made on first start), `run/<service>.pid` and `logs/<service>.log` (0600, in 0700 folders), and each
service's data folder (private too: `umbra serve` creates every file 0600 and every folder 0700).

A pid file names a process, not just a number: `{"pid": 4242, "started": 81234567}`, `started` being the
process's start time (field 22 of /proc/<pid>/stat, clock ticks after boot), which a pid the system has since
given to another process does not share. A service counts as running only while a live process (a zombie
does not count) with that pid and start time exists; `up` and `down` remove a pid file that names no such
process, and `down` signals only the process its pid file names. A pid file of an older `umbra up`, just the
number, is trusted only when that process's command line runs `umbra.cli.main serve <service>`. Without
/proc (not Linux) a pid counts as running while any process has it, as before.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from umbra.cli.text import printable
from umbra.client import layout
from umbra.client.client import health_of


def _secret(path: Path) -> str:
    """Reads a secret file, making it (0600, written atomically) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        os.replace(tmp, path)
    return path.read_text().strip()


def service_env(home: Path) -> dict[str, str]:
    """The environment each service process starts with."""
    env = dict(os.environ)
    env[layout.HOME_ENV] = str(home)
    env.setdefault("UMBRA_SERVICE_TOKEN", _secret(home / "secrets" / "service-token"))
    env.setdefault("UMBRA_ADMIN_KEY", _secret(home / "secrets" / "admin-key"))
    return env


def _pid_file(home: Path, service: str) -> Path:
    return home / "run" / f"{service}.pid"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, from /proc/<pid>/stat; None when no process has the pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so the fields start after the last ")"
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _runs_service(pid: int, service: str) -> bool:
    """Whether the process's command line is `... umbra.cli.main serve <service>`."""
    args = _command_line(pid)
    return any(args[i : i + 3] == ["umbra.cli.main", "serve", service] for i in range(len(args)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _read_pid_file(path: Path) -> tuple[int, int | None] | None:
    """(pid, start time) from a pid file; the start time is None in an old one (just the pid); None when
    there is no file or it holds neither."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict):
        pid, started = record.get("pid"), record.get("started")
    else:
        pid, started = record, None
    if type(pid) is not int or pid <= 0 or (started is not None and type(started) is not int):
        return None  # a pid of 0 or -1 would make os.kill signal whole process groups
    return pid, started


def _pid(home: Path, service: str) -> int | None:
    """The pid of the service's process when its pid file names one that runs (see the module docstring)."""
    recorded = _read_pid_file(_pid_file(home, service))
    if recorded is None:
        return None
    pid, started = recorded
    if not os.path.exists("/proc/self/stat"):  # not Linux: a live pid is all there is to check
        return pid if _alive(pid) else None
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # gone, or a zombie: it has exited
        return None
    if started is None:
        return pid if _runs_service(pid, service) else None
    return pid if stat[1] == started else None


def _write_pid_file(home: Path, service: str, pid: int) -> None:
    """Writes the pid file (0600, atomically: a reader sees the old file or the new one, never half of it)."""
    path = _pid_file(home, service)
    stat = _proc_stat(pid)
    record = {"pid": pid} if stat is None else {"pid": pid, "started": stat[1]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        json.dump(record, handle)
    os.replace(tmp, path)


def _signal(home: Path, service: str, pid: int, signum: int) -> bool:
    """Sends a signal to the service's process if its pid file still names it; False when it does not. On
    Linux through a pidfd opened before the check, so the process checked is the one signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux (or an old kernel), or no such process: check, then kill
        pidfd = None
    try:
        if _pid(home, service) != pid:
            return False
        if pidfd is None:
            os.kill(pid, signum)
        else:
            signal.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def up(services: list[str], timeout: float = 60.0) -> int:
    home = layout.home()
    env = service_env(home)
    for d in ("run", "logs"):
        (home / d).mkdir(parents=True, exist_ok=True, mode=0o700)
    started: dict[str, subprocess.Popen] = {}
    for service in services:
        pid = _pid(home, service)
        if pid is not None:
            print(f"{service:12} already running (pid {pid})")
            continue
        _pid_file(home, service).unlink(missing_ok=True)  # stale: its process is gone or the pid is reused
        log_fd = os.open(home / "logs" / f"{service}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(log_fd, 0o600)  # a log an older `umbra up` made 0644
        with os.fdopen(log_fd, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", service], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        _write_pid_file(home, service, proc.pid)
        started[service] = proc
    deadline = time.monotonic() + timeout
    failed = []
    for service in services:
        target = layout.endpoint(service).target
        while (state := health_of(target, timeout=1.0)) != "SERVING":
            proc = started.get(service)
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                failed.append(service)
                break
            time.sleep(0.2)
        print(f"{service:12} {target:21} {state}")
    for service in failed:
        log = home / "logs" / f"{service}.log"
        tail = log.read_text(errors="replace").splitlines()[-10:] if log.exists() else []
        print(f"\n{service} did not become healthy; last lines of {log}:", *map(printable, tail), sep="\n  ",
              file=sys.stderr)  # a log line may quote what a tenant sent
    if not failed:
        print(f"\nall {len(services)} services up; logs in {home / 'logs'}; stop them with `umbra down`")
    return 1 if failed else 0


def down(services: list[str], timeout: float = 45.0) -> int:
    home = layout.home()
    stopping = {}
    for service in services:
        pid = _pid(home, service)
        if pid is None or not _signal(home, service, pid, signal.SIGTERM):
            print(f"{service:12} not running")
            _pid_file(home, service).unlink(missing_ok=True)
            continue
        stopping[service] = pid
    deadline = time.monotonic() + timeout
    for service, pid in stopping.items():
        while _pid(home, service) == pid and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _signal(home, service, pid, signal.SIGKILL):
            print(f"{service:12} did not stop within {timeout:.0f}s: killed")
        else:
            print(f"{service:12} stopped")
        _reap(pid)
        _pid_file(home, service).unlink(missing_ok=True)
    return 0


def _reap(pid: int) -> None:
    """Collects a child's exit status when `down` runs in the process that started it (tests, the demo)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(services: list[str]) -> int:
    home = layout.home()
    all_serving = True
    print(f"{'SERVICE':12} {'ADDRESS':21} {'HEALTH':12} PID")
    for service in services:
        target = layout.endpoint(service).target
        state = health_of(target)
        pid = _pid(home, service)
        all_serving &= state == "SERVING"
        print(f"{service:12} {target:21} {state:12} {pid or '-'}")
    return 0 if all_serving else 1
