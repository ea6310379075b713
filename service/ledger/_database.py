"""The engine and the migrations: SQLite (a file, WAL, a busy timeout, `BEGIN IMMEDIATE` for
writes) or PostgreSQL through psycopg 3; the schema brought to Alembic's head on open."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, OperationalError

from slidemill.service.ledger._errors import LedgerInputError, LedgerUnavailableError

MIGRATIONS = Path(__file__).with_name("migrations")
"""Alembic's script folder; its configuration is made here, in code (no alembic.ini)."""

WRITE = "slidemill_ledger_write"
"""Execution option of a connection whose transaction writes: on SQLite it begins with
`BEGIN IMMEDIATE`, taking the write lock up front, so two writers queue on the busy timeout
instead of one failing when it upgrades a read snapshot that another has since changed."""

BUSY_TIMEOUT_S = 30.0
"""How long a SQLite writer waits for another's lock before the ledger reports it unavailable."""

_MIGRATION_LOCK = 0x51D3_1ED6
"""PostgreSQL advisory lock key held while migrating, so two services starting at once do not
both create the tables."""


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL; `postgresql://` means psycopg 3, the driver slidemill installs."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise LedgerInputError(f"ledger database {url!r} is not a database URL") from err
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite" or not parsed.database or parsed.database == ":memory:":
            raise LedgerInputError(
                f"ledger database {url!r}: give a SQLite file (sqlite:///path/ledger.sqlite); "
                "an in-memory database would not outlive the service"
            )
    elif parsed.drivername != "postgresql+psycopg":
        raise LedgerInputError(
            f"ledger database {url!r}: use sqlite:///FILE or postgresql+psycopg://…"
        )
    return parsed


def create(url: URL) -> Engine:
    """An engine for `url` (from `parse_url`), set up for the ledger's short transactions from
    several threads."""
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    assert url.database is not None  # parse_url refuses anything else
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _: Any) -> None:
    # SQLAlchemy emits BEGIN itself (`_sqlite_begin`), not the driver's legacy transaction control
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    _wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _wal(cursor: sqlite3.Cursor) -> None:
    """Write-ahead logging, so readers never wait for the writer. The mode is kept in the file;
    switching to it takes a lock that SQLite's busy handler does not wait for, so two
    connections opening a new file at once retry it until the busy timeout."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration, in code, migrating over `connection` (in its transaction).

    A new migration: `alembic.command.revision(alembic_config(conn), "message",
    autogenerate=True)` against a database at head writes its first draft to
    `migrations/versions`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration; nothing when it is there already. One
    transaction: a migration that fails leaves the schema as it was (SQLite and PostgreSQL
    both have transactional DDL)."""
    try:
        with engine.connect() as connection:
            connection = connection.execution_options(**{WRITE: True})
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                command.upgrade(alembic_config(connection), "head")
    except OperationalError as err:
        raise unavailable(engine.url, err) from err


def unavailable(url: URL, err: OperationalError) -> LedgerUnavailableError:
    """The error for a database that cannot be reached or stays locked."""
    reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
    shown = url.render_as_string(hide_password=True)
    return LedgerUnavailableError(f"ledger database {shown}: {reason}")
