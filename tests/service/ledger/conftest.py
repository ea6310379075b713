"""The ledger's backends: a SQLite file in the test's folder, and a real PostgreSQL server (from
Debian's `postgresql` package) started once per session, with a fresh database per test made by
pytest-postgresql's `DatabaseJanitor`.

pytest-postgresql's own `postgresql_proc` runs `pg_ctl` as the current user, and PostgreSQL
refuses to run as root; as root (CI containers) the server here runs as the `postgres` account
that the Debian package creates, through `runuser`, in a folder that account owns."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from slidemill.service.ledger import Ledger
from tests.helpers import free_port

PG_INSTALL_HINT = "install PostgreSQL's server (Debian: apt-get install postgresql)"


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A running server on loopback, `user` a superuser trusted without a password."""

    host: str
    port: int
    user: str

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"


def _pg_bin() -> Path | None:
    """The newest server's binaries: Debian keeps them in /usr/lib/postgresql/<major>/bin, off
    the PATH; elsewhere `pg_ctl` is on it."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(re.sub(r"\D", "", p.parts[-3]) or 0),
    )
    found = debian[-1] if debian else shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries (pg_ctl, initdb): {PG_INSTALL_HINT}")
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                f"running as root, PostgreSQL needs the `postgres` account: {PG_INSTALL_HINT}"
            )
        run_as = ["runuser", "-u", "postgres", "--"]
    # not under pytest's basetemp: its folders are 0700 and root's, closed to `postgres`
    base = Path(tempfile.mkdtemp(prefix="slidemill-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, log = base / "data", base / "server.log"
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"  # a throwaway server
    )

    def pg(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
           "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        try:
            pg(str(bin_dir / "pg_ctl"), "start", "-w", "-D", str(data), "-l", str(log),
               "-o", options)  # fmt: skip
        except subprocess.CalledProcessError:
            pytest.fail(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres")
    finally:
        if (data / "postmaster.pid").exists():
            pg(str(bin_dir / "pg_ctl"), "stop", "-w", "-D", str(data), "-m", "fast")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    dbname = f"ledger_{uuid4().hex[:12]}"
    with DatabaseJanitor(user=server.user, host=server.host, port=server.port, dbname=dbname):
        yield server.url(dbname)


class Clock:
    """A clock the test drives: every reading is a millisecond after the one before, so
    records made one after another never share a time; `advance` jumps."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(milliseconds=1)
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Jump forward; returns the new time."""
        with self._lock:
            self._now += delta
            return self._now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 29, 0, 30, tzinfo=UTC))


@pytest.fixture
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened
