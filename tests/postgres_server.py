"""A real PostgreSQL 15 server for tests: the project's own deploy/postgres/pg.sh (Debian's binaries, run as an
unprivileged user, 127.0.0.1 only, password auth, fsync on). The session fixture `postgres_server`
(tests/conftest.py) runs one through `running_postgres`; each test takes its own database with `database(name)`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG = ROOT / "deploy" / "postgres" / "pg.sh"


def pg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PG), *args], capture_output=True, text=True, timeout=600)


def pg_ok(*args: str) -> str:
    done = pg(*args)
    assert done.returncode == 0, f"pg.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def pg_env() -> dict[str, str]:
    env = {}
    for line in pg_ok("env").splitlines():
        name, _, value = line.partition("=")
        env[name.strip()] = value.strip()
    return env


@dataclass(frozen=True)
class PostgresServer:
    url: str  # SQLAlchemy URL of the database "umbra": postgresql+psycopg://umbra:<password>@127.0.0.1:<port>/umbra
    port: int

    def url_for(self, name: str) -> str:
        """The SQLAlchemy URL of database `name` on this server (not created here)."""
        return self.url.rsplit("/", 1)[0] + "/" + name

    def conninfo(self, name: str = "umbra") -> str:
        """The libpq/psycopg form of url_for(name)."""
        return self.url_for(name).replace("postgresql+psycopg://", "postgresql://", 1)

    def database(self, name: str) -> str:
        """A fresh, empty database `name` (dropped first if an earlier run left one); returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        if not name or len(name.encode()) > 63:
            raise ValueError(f"database names are 1 to 63 bytes: {name!r}")
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        return self.url_for(name)

    def start(self) -> None:
        pg_ok("start")

    def stop(self) -> None:
        pg_ok("stop")

    def restart(self) -> None:
        pg_ok("restart")


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server while the block runs, started here if it is not running and stopped afterwards
    unless it was already running or UMBRA_KEEP_PG is set."""
    already_running = pg("status").returncode == 0
    if not already_running:
        pg_ok("start")
    url = pg_env()["UMBRA_DATABASE_URL"]
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    try:
        yield PostgresServer(url, port)
    finally:
        if not already_running and not os.environ.get("UMBRA_KEEP_PG"):
            pg("stop")
