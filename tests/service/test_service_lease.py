"""One service per ledger: the lease a service takes before it touches the ledger's batches,
over a real SQLite ledger. A live holder refuses a second service, naming itself; a holder
that is dead (its PID gone or reused on this host, its heartbeats stopped elsewhere) is taken
over. The staleness decision is pure and tested without a database."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from slidemill.service import ServiceLease, lease_is_stale
from slidemill.service.ledger import LeaseRecord, Ledger, LedgerInUseError
from tests.service.ledger.test_ledger import Clock

HOST = socket.gethostname()
START = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock=clock) as opened:
        yield opened


def _lease(ledger: Ledger, clock: Clock) -> ServiceLease:
    return ServiceLease(ledger, clock=clock)


def _holder(host: str, pid: int, started: float, heartbeat: datetime) -> LeaseRecord:
    return LeaseRecord(host=host, pid=pid, process_started=started, token="h" * 32,
                       acquired_at=heartbeat, heartbeat_at=heartbeat)  # fmt: skip


def test_staleness_on_this_host_by_pid_and_start_time_elsewhere_by_heartbeat() -> None:
    now = START + timedelta(minutes=1)
    live = _holder(HOST, 42, 1000.0, START)
    assert not lease_is_stale(live, host=HOST, pid_started=1000.0, now=now)
    assert lease_is_stale(live, host=HOST, pid_started=None, now=now)  # no such process
    assert lease_is_stale(live, host=HOST, pid_started=2000.0, now=now)  # its PID, reused
    away = _holder("elsewhere", 42, 1000.0, START)
    assert not lease_is_stale(away, host=HOST, pid_started=None, now=now)
    assert not lease_is_stale(away, host=HOST, pid_started=None, now=START + timedelta(minutes=9))
    assert lease_is_stale(away, host=HOST, pid_started=None, now=START + timedelta(minutes=11))


def test_a_second_service_is_refused_with_one_line_naming_the_first(
    ledger: Ledger, clock: Clock
) -> None:
    first = _lease(ledger, clock)
    first.acquire()
    with pytest.raises(LedgerInUseError) as caught:
        _lease(ledger, clock).acquire()
    message = str(caught.value)
    assert f"PID {os.getpid()} on {HOST}" in message and "\n" not in message
    assert ledger.url in message and ledger.url.startswith("sqlite:///")
    first.release()
    assert ledger.lease() is None
    _lease(ledger, clock).acquire()  # free again


def test_a_dead_holder_on_this_host_is_taken_over(ledger: Ledger, clock: Clock) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # exited and reaped: its PID names no process (or a later one)
    ledger.take_lease(host=HOST, pid=gone.pid, process_started=psutil.boot_time() + 1,
                      token="d" * 32)  # fmt: skip
    lease = _lease(ledger, clock)
    lease.acquire()
    held = ledger.lease()
    assert held is not None and (held.pid, held.token) == (os.getpid(), lease.token)


def test_a_holder_elsewhere_is_taken_over_once_its_heartbeats_stop(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.take_lease(host="elsewhere", pid=1, process_started=1.0, token="e" * 32)
    with pytest.raises(LedgerInUseError, match="PID 1 on elsewhere"):
        _lease(ledger, clock).acquire()
    clock.advance(timedelta(minutes=11))
    lease = _lease(ledger, clock)
    lease.acquire()
    assert lease.lost is None


def test_the_heartbeat_keeps_the_lease_and_notices_when_it_was_taken(
    ledger: Ledger, clock: Clock
) -> None:
    lease = _lease(ledger, clock)
    lease.acquire()
    before = ledger.lease()
    clock.advance(timedelta(minutes=1))
    assert lease.beat()
    after = ledger.lease()
    assert before is not None and after is not None and after.heartbeat_at > before.heartbeat_at
    ledger.take_lease(host="elsewhere", pid=7, process_started=1.0, token="t" * 32,
                      replacing=lease.token)  # fmt: skip
    assert not lease.beat()
    assert lease.lost is not None and "PID 7 on elsewhere" in lease.lost
    lease.release()  # not ours any more: left to its holder
    assert ledger.lease() is not None
