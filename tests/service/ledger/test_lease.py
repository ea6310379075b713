"""The ledger's one-service lease, on SQLite and PostgreSQL: one holder at a time, taken over
only by naming the holder it replaces, renewed by its holder alone, released by its holder."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import create_engine, inspect

from slidemill.service.ledger import LeaseRecord, Ledger
from tests.service.ledger.conftest import Clock
from tests.service.ledger.test_ledger import _in_threads


def _take(ledger: Ledger, token: str, *, pid: int = 100, replacing: str | None = None) -> bool:
    return ledger.take_lease(
        host="lab-1", pid=pid, process_started=1_700_000_000.25, token=token, replacing=replacing
    )


def test_the_lease_has_one_holder_and_is_replaced_only_by_naming_it(
    ledger: Ledger, clock: Clock
) -> None:
    assert ledger.lease() is None
    assert _take(ledger, "a" * 32)
    held = ledger.lease()
    assert isinstance(held, LeaseRecord)
    assert (held.host, held.pid, held.process_started, held.token) == (
        "lab-1", 100, 1_700_000_000.25, "a" * 32,
    )  # fmt: skip
    assert held.acquired_at == held.heartbeat_at and held.acquired_at.tzinfo is not None

    assert not _take(ledger, "b" * 32, pid=200)  # held: a second service is refused
    assert not _take(ledger, "b" * 32, pid=200, replacing="c" * 32)  # not the holder named
    assert ledger.lease() == held

    later = clock.advance(timedelta(minutes=5))
    assert ledger.renew_lease("a" * 32)
    renewed = ledger.lease()
    assert renewed is not None and renewed.heartbeat_at > later - timedelta(seconds=1)
    assert renewed.acquired_at == held.acquired_at

    # a stale holder is replaced by naming it; it then cannot renew nor release
    assert _take(ledger, "b" * 32, pid=200, replacing="a" * 32)
    assert not ledger.renew_lease("a" * 32)
    assert not ledger.release_lease("a" * 32)
    current = ledger.lease()
    assert current is not None and (current.pid, current.token) == (200, "b" * 32)
    assert ledger.release_lease("b" * 32)
    assert ledger.lease() is None
    assert not ledger.renew_lease("b" * 32)


def test_services_starting_at_once_get_one_lease(ledger: Ledger) -> None:
    mine = [f"{i:032x}" for i in range(4)]
    left = list(mine)
    lock = threading.Lock()

    def take() -> bool:
        with lock:
            token = left.pop()
        return _take(ledger, token)

    assert sorted(_in_threads(4, take)) == [False, False, False, True]
    held = ledger.lease()
    assert held is not None and held.token in mine


def test_the_lease_table_is_made_by_the_migrations(ledger_url: str) -> None:
    with Ledger.open(ledger_url):
        pass
    engine = create_engine(ledger_url)
    try:
        assert "service_lease" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
