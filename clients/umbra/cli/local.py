"""`umbra up`, `umbra down`, `umbra status`: every service as its own process on this machine.

State lives under $UMBRA_HOME (default ./.umbra): `secrets/` (the service token and admin key, mode 0600,
made on first start), `run/<service>.pid`, `logs/<service>.log`, and each service's data folder.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _pid(home: Path, service: str) -> int | None:
    try:
        pid = int((home / "run" / f"{service}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def up(services: list[str], timeout: float = 60.0) -> int:
    home = layout.home()
    env = service_env(home)
    for d in ("run", "logs"):
        (home / d).mkdir(parents=True, exist_ok=True)
    started: dict[str, subprocess.Popen] = {}
    for service in services:
        if _pid(home, service) is not None:
            print(f"{service:12} already running (pid {_pid(home, service)})")
            continue
        log = open(home / "logs" / f"{service}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", service], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        (home / "run" / f"{service}.pid").write_text(str(proc.pid))
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
        print(f"\n{service} did not become healthy; last lines of {log}:", *tail, sep="\n  ", file=sys.stderr)
    if not failed:
        print(f"\nall {len(services)} services up; logs in {home / 'logs'}; stop them with `umbra down`")
    return 1 if failed else 0


def down(services: list[str], timeout: float = 45.0) -> int:
    home = layout.home()
    stopping = {}
    for service in services:
        pid = _pid(home, service)
        if pid is None:
            print(f"{service:12} not running")
            (home / "run" / f"{service}.pid").unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        stopping[service] = pid
    deadline = time.monotonic() + timeout
    for service, pid in stopping.items():
        while _pid(home, service) is not None and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _pid(home, service) is not None:
            os.kill(pid, signal.SIGKILL)
            print(f"{service:12} did not stop within {timeout:.0f}s: killed")
        else:
            print(f"{service:12} stopped")
        (home / "run" / f"{service}.pid").unlink(missing_ok=True)
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
