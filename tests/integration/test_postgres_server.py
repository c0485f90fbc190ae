"""The real PostgreSQL server for tests (deploy/postgres/pg.sh through the `postgres_server` fixture): a fresh
database per test, password auth on 127.0.0.1, committed rows survive a restart."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from postgres_server import pg

pytestmark = pytest.mark.slow


def test_database_survives_restart(postgres_server):
    url = postgres_server.database("umbra_test_pg_server")
    assert url.startswith("postgresql+psycopg://umbra:")
    assert url.endswith(f"@127.0.0.1:{postgres_server.port}/umbra_test_pg_server")
    conninfo = postgres_server.conninfo("umbra_test_pg_server")
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'zwei €')")
        settings = conn.execute("SELECT current_setting('fsync'), current_setting('max_connections')").fetchone()
        assert settings == ("on", "200")

    postgres_server.restart()

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, name FROM t ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "one"), (2, "zwei €")]

    # database() always hands out an empty database
    postgres_server.database("umbra_test_pg_server")
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() == (0,)


def test_password_required(postgres_server):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"host=127.0.0.1 port={postgres_server.port} user=umbra password=wrong dbname=umbra")


def test_script_createdb(postgres_server):
    assert pg("createdb", "umbra_test_pg_script").returncode == 0
    assert pg("createdb", "umbra_test_pg_script").returncode == 0  # idempotent
    done = pg("psql", "-Atc", "SELECT count(*) FROM pg_database WHERE datname = 'umbra_test_pg_script'")
    assert done.returncode == 0 and done.stdout.strip() == "1"
    assert pg("status").returncode == 0
