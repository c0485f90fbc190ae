"""One SQL layer over SQLite (the embedded default: one process) and PostgreSQL (any number of processes).

The coordinator's state is plain SQL with `?` placeholders, written once for both engines. SQLAlchemy opens the
connections (its URL, its pool, its pre-ping after a server restart) and Alembic runs the schema's versioned
migrations; the statements themselves go to the driver as written (`?` becomes psycopg's `%s`).

    db = Database.open("postgresql+psycopg://umbra:…@db:5432/umbra")   # or "sqlite:////data/coordinator.sqlite3"
    db.migrate(MIGRATIONS)                 # Alembic: brings the schema to the newest revision this code knows
    with db.transaction() as sql:          # one writer at a time, on every engine
        sql.execute("UPDATE tenants SET state = ? WHERE id = ?", ("DELETED", "acme"))
    db.fetch_one("SELECT state FROM tenants WHERE id = ?", ("acme",))

Writes are serialized on both engines, which is what the check-then-write code above this layer was written for:
SQLite's `BEGIN IMMEDIATE` holds the database file, and a PostgreSQL write transaction first takes one
transaction-scoped advisory lock (released by COMMIT or ROLLBACK, so a replica that dies mid-transaction holds
nothing). Reads run without it, each in its own short transaction (or inside the thread's open transaction, which
they then see). Transactions are short: nothing slow runs while one is open.

Errors come out as the runtime's own: a server that cannot be reached is `Unavailable` (UNAVAILABLE to callers),
a unique or key constraint is `IntegrityError`, and opening a database that cannot be used is `StartupError`,
whose message is one line for the operator.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from umbra.runtime.config import ConfigError
from umbra.runtime.errors import Unavailable

log = logging.getLogger(__name__)

WRITE_LOCK = 0x756D627261  # "umbra": the advisory lock every PostgreSQL write transaction takes
MIGRATION_LOCK = WRITE_LOCK + 1  # held while one replica migrates the schema
CONNECT_SECONDS = 10


class StartupError(ConfigError):
    """The database cannot be used: unreachable, a schema newer than this code, a second process on SQLite.
    The message is one line that says why."""


class IntegrityError(Exception):
    """A unique, primary-key or foreign-key constraint refused a write (on either engine)."""


class DatabaseUnavailable(Unavailable):
    """The database server cannot be reached (UNAVAILABLE to callers). Work whose state lives in the database waits
    for it and goes on, rather than failing: nothing was written by the statement that raised this."""


def _driver_errors():
    import psycopg  # noqa: PLC0415 - only PostgreSQL deployments need it loaded

    return psycopg


class Session:
    """The open transaction's connection: `execute` and `executemany` with `?` placeholders."""

    def __init__(self, connection, postgres: bool):
        self._connection = connection
        self._postgres = postgres

    def _sql(self, query: str) -> str:
        return query.replace("%", "%%").replace("?", "%s") if self._postgres else query

    def execute(self, query: str, args: Sequence = ()):
        """The driver's cursor (fetchone, fetchall, rowcount)."""
        cursor = self._connection.cursor()
        with _translated():
            cursor.execute(self._sql(query), tuple(args))
        return cursor

    def executemany(self, query: str, rows: Sequence[Sequence]) -> None:
        cursor = self._connection.cursor()
        with _translated():
            cursor.executemany(self._sql(query), [tuple(r) for r in rows])


@contextmanager
def _translated() -> Iterator[None]:
    """The drivers' errors as the runtime's."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise IntegrityError(str(exc)) from exc
    except sqlite3.OperationalError:
        raise
    except Exception as exc:
        kind = type(exc).__module__
        if kind.startswith("psycopg"):
            psycopg = _driver_errors()
            if isinstance(exc, psycopg.IntegrityError):
                raise IntegrityError(str(exc).splitlines()[0]) from exc
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                raise DatabaseUnavailable("the coordinator's database cannot be reached; try again shortly") from exc
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError,
                            sqlalchemy.exc.InterfaceError)):
            raise DatabaseUnavailable("the coordinator's database cannot be reached; try again shortly") from exc
        raise


def describe(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


_HELD: dict[Path, int] = {}  # SQLite files this process holds alone: path -> the locked descriptor


def _hold_alone(path: Path) -> None:
    """Holds `path`.lock until the process ends (the kernel drops it when the process dies, however it dies).
    StartupError when another process holds it: SQLite is one replica's database."""
    lock = path.with_name(path.name + ".lock").resolve()
    if lock in _HELD:
        return
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StartupError(f"another coordinator process already uses the SQLite database {path}: SQLite serves one "
                           "replica; run more replicas on PostgreSQL (UMBRA_DATABASE_URL)") from None
    _HELD[lock] = descriptor


def release_alone(path: Path) -> None:
    """Lets another process hold `path` alone (Database.close: a coordinator stopped in a process that goes on)."""
    descriptor = _HELD.pop(path.with_name(path.name + ".lock").resolve(), None)
    if descriptor is not None:
        os.close(descriptor)


class Database:
    """A SQLite file or a PostgreSQL server, with the same `transaction`, `fetch_one` and `fetch_all`."""

    def __init__(self, engine: sqlalchemy.Engine):
        self.engine = engine
        self.dialect = engine.dialect.name  # "sqlite" | "postgresql"
        self.postgres = self.dialect == "postgresql"
        self._local = threading.local()  # the thread's open transaction, which nested calls join
        self._sqlite_lock = threading.RLock()
        self._sqlite = None
        self._alone: Path | None = None  # the SQLite file this process holds alone, if it does
        if not self.postgres:  # one connection, one writer: SQLite's own model
            self._sqlite = engine.raw_connection()
            driver = self._sqlite.driver_connection
            driver.isolation_level = None  # we say BEGIN and COMMIT ourselves
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=5000"):
                driver.execute(f"PRAGMA {pragma}")

    @classmethod
    def open(cls, url: str, *, pool_size: int = 8, single_process: bool = False) -> "Database":
        """Opens `url` (`sqlite:///path` or `postgresql+psycopg://…`). StartupError when it cannot be used.
        `single_process`: on SQLite, refuse when another process holds the file this way (a second replica)."""
        try:
            parsed = make_url(url)
        except sqlalchemy.exc.ArgumentError:
            raise StartupError("UMBRA_DATABASE_URL: not a database URL (expected sqlite:///PATH or "
                               "postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME)") from None
        backend = parsed.get_backend_name()
        alone: Path | None = None
        if backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sqlalchemy.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            alone = Path(parsed.database) if single_process and parsed.database not in (None, "", ":memory:") else None
            if alone is not None:
                _hold_alone(alone)
        elif backend == "postgresql":
            if parsed.get_driver_name() != "psycopg":
                raise StartupError(f"UMBRA_DATABASE_URL: use the psycopg driver (postgresql+psycopg://…), not "
                                   f"{parsed.drivername!r}")
            engine = sqlalchemy.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_timeout=CONNECT_SECONDS,
                connect_args={"connect_timeout": CONNECT_SECONDS, "application_name": "umbra-coordinator"})
        else:
            raise StartupError(f"UMBRA_DATABASE_URL: {backend!r} is not supported (sqlite or postgresql)")
        try:
            if backend == "postgresql":
                with engine.connect():  # reachable, and the credentials work: said now, not at the first call
                    pass
            database = cls(engine)
            database._alone = alone
            return database
        except Exception as exc:  # noqa: BLE001 - one line for the operator, whatever the driver raised
            if alone is not None:
                release_alone(alone)
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()
            raise StartupError(f"the database {describe(url)} cannot be opened: "
                               f"{reason[0] if reason else type(exc).__name__}") from None

    # -- transactions -----------------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back when it raises. Nested blocks on one
        thread join the open transaction."""
        open_session = getattr(self._local, "session", None)
        if open_session is not None:
            yield open_session
            return
        if not self.postgres:
            with self._sqlite_lock:
                driver = self._sqlite.driver_connection
                with _translated():
                    driver.execute("BEGIN IMMEDIATE")
                self._local.session = session = Session(driver, postgres=False)
                try:
                    yield session
                    driver.execute("COMMIT")
                except BaseException:
                    driver.execute("ROLLBACK")
                    raise
                finally:
                    self._local.session = None
            return
        with self._postgres_connection() as connection:
            session = Session(connection, postgres=True)
            session.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            self._local.session = session
            try:
                yield session
            finally:
                self._local.session = None

    @contextmanager
    def _postgres_connection(self) -> Iterator:
        """A pooled connection in a transaction that commits when the block ends; a broken one is discarded."""
        with _translated():
            connection = self.engine.raw_connection()
        try:
            yield connection
            with _translated():
                connection.commit()
        except BaseException:
            try:
                connection.rollback()
            except Exception:  # noqa: BLE001 - the connection is gone; the pool drops it below
                connection.invalidate()
            raise
        finally:
            connection.close()  # back to the pool

    @contextmanager
    def session_connection(self) -> Iterator[Session]:
        """A PostgreSQL connection of its own in autocommit, for session-level advisory locks held across
        transactions (umbra.services.coordinator.locks); back to the pool when the block ends."""
        if not self.postgres:
            raise RuntimeError("session connections are PostgreSQL's")
        with _translated():
            connection = self.engine.raw_connection()
        try:
            connection.driver_connection.autocommit = True
            yield Session(connection, postgres=True)
        except BaseException:
            connection.invalidate()  # whatever it held dies with it
            raise
        finally:
            if connection.is_valid:
                connection.driver_connection.autocommit = False
            connection.close()

    def fetch_one(self, query: str, args: Sequence = ()):
        return self._read(query, args, one=True)

    def fetch_all(self, query: str, args: Sequence = ()):
        return self._read(query, args, one=False)

    def _read(self, query: str, args: Sequence, *, one: bool):
        open_session = getattr(self._local, "session", None)
        if open_session is not None:
            cursor = open_session.execute(query, args)
            return cursor.fetchone() if one else cursor.fetchall()
        if not self.postgres:
            with self._sqlite_lock:
                cursor = Session(self._sqlite.driver_connection, postgres=False).execute(query, args)
                return cursor.fetchone() if one else cursor.fetchall()
        with self._postgres_connection() as connection:
            cursor = Session(connection, postgres=True).execute(query, args)
            return cursor.fetchone() if one else cursor.fetchall()

    # -- schema -----------------------------------------------------------------------------------------------

    def migrate(self, script_location: Path) -> str:
        """Brings the schema to the newest revision in `script_location` (an Alembic script directory) and returns
        it. StartupError when the database holds a revision this code does not know (a newer release wrote it)."""
        from alembic import command  # noqa: PLC0415 - only at start
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(script_location))
        scripts = ScriptDirectory.from_config(config)
        head = scripts.get_current_head()
        try:
            with self._migration_connection() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
                if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
                    raise StartupError(f"the database's schema is at revision {current}, newer than this code knows "
                                       f"(its newest is {head}): run the release that wrote it, or a newer one")
                if current != head:
                    log.info("migrating the database schema from %s to %s", current or "nothing", head)
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
        except StartupError:
            raise
        except sqlalchemy.exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()
            raise StartupError(f"the database {self.engine.url.render_as_string(hide_password=True)} "
                               f"cannot be migrated: {reason[0] if reason else type(exc).__name__}") from None
        return head

    def revision(self) -> str | None:
        """The schema's revision in the database (None before the first migration)."""
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        with self._migration_connection() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @contextmanager
    def _migration_connection(self) -> Iterator[sqlalchemy.Connection]:
        if not self.postgres:
            with self._sqlite_lock:
                with self.engine.connect() as connection:  # the lock keeps this process's other writes out
                    yield connection
                    connection.commit()
            return
        with self.engine.connect() as connection:
            # Replicas that start together migrate one after another; the others then find the schema current.
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                yield connection
                connection.commit()
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                connection.commit()

    def close(self) -> None:
        if self._sqlite is not None:
            with self._sqlite_lock:
                self._sqlite.close()
        self.engine.dispose()
        if self._alone is not None:
            release_alone(self._alone)

