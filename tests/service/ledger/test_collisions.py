"""What the ledger guarantees when batches or schedules collide, on SQLite and PostgreSQL: batches
sharing an output folder run one after another; an inbox file whose batch ended without its
result goes back to the inbox as failed; a schedule row that no longer loads is reported with its
reason instead of breaking every listing; a schedule's last failure is kept on it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from slidemill.service.ledger import (
    BatchRecord,
    BatchStatus,
    BrokenScheduleRecord,
    Ledger,
    ScheduleRecord,
)
from slidemill.service.schedules import CatchUp, InboxFile, InboxState, Schedule, take
from tests.service.ledger.conftest import Clock
from tests.service.ledger.test_ledger import _alembic, _in_threads, head_revision


def _batch(ledger: Ledger, out: str, *, priority: int = 0, origin: str = "api") -> BatchRecord:
    return ledger.create_batch(
        request={"out": out}, out=out, slides=[("s0", "/slides/s0.svs")], origin=origin,
        priority=priority,
    )  # fmt: skip


def _nightly(name: str = "nightly", **changes: Any) -> Schedule:
    fields: dict[str, Any] = {
        "name": name, "cron": "0 22 * * *", "tz": "UTC", "inbox": "/lab/inbox",
        "model": "/models/m", "out_template": "/lab/out/{date}", "catch_up": CatchUp.LATEST,
        "max_attempts": 3, "settle_s": 30.0,
    }  # fmt: skip
    return Schedule(**(fields | changes))


# -- batches sharing an output folder ------------------------------------------------------


def test_a_batch_waits_while_another_runs_into_its_output_folder(ledger: Ledger) -> None:
    first = _batch(ledger, "/out/shared")
    second = _batch(ledger, "/out/shared", priority=5)  # higher, yet it must wait its turn
    other = _batch(ledger, "/out/other")
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == second.id
    # the first shares the running batch's folder: the other folder's batch goes ahead
    then = ledger.claim_next()
    assert then is not None and then.id == other.id
    assert ledger.claim_next() is None
    ledger.finish(second.id, BatchStatus.DONE)
    last = ledger.claim_next()
    assert last is not None and last.id == first.id


def test_claimers_at_once_never_run_two_batches_into_one_folder(ledger: Ledger) -> None:
    for i in range(6):
        _batch(ledger, f"/out/{i % 2}")
    claimed = [c for c in _in_threads(6, ledger.claim_next) if c is not None]
    assert sorted(c.out for c in claimed) == ["/out/0", "/out/1"]
    assert len(ledger.list(status=BatchStatus.QUEUED)) == 4


# -- inbox files of a batch that ended without their result --------------------------------


def _taken(ledger: Ledger, batch: BatchRecord, files: list[InboxFile]) -> None:
    ledger.inbox_taken("nightly", files, batch.id)


OLD = int(datetime(2026, 3, 28, tzinfo=UTC).timestamp()) * 1_000_000_000
NOW = datetime(2026, 3, 29, 22, 0, tzinfo=UTC)


def test_a_stopped_batchs_taken_files_go_back_as_failed_and_are_retried(ledger: Ledger) -> None:
    ledger.add_schedule(_nightly())
    a, b = InboxFile("/lab/inbox/a.svs", 10, OLD), InboxFile("/lab/inbox/b.svs", 11, OLD)
    batch = _batch(ledger, "/lab/out/2026-03-29", origin="schedule:nightly")
    _taken(ledger, batch, [a, b])
    ledger.inbox_result("nightly", *a.key, InboxState.DONE)  # a was published before the stop
    claimed = ledger.claim_next()
    assert claimed is not None
    ledger.finish(batch.id, BatchStatus.STOPPED, "/lab/out/2026-03-29: in use by another run")
    seen = {r.path: r for r in ledger.inbox_seen("nightly")}
    assert seen[a.path].state is InboxState.DONE
    assert seen[b.path].state is InboxState.FAILED and seen[b.path].attempts == 1
    assert seen[b.path].last_error == "/lab/out/2026-03-29: in use by another run"
    again = take([a, b], ledger.inbox_seen("nightly"), NOW, 30, 3)
    assert again.take == (b,) and again.retry == (b,)


@pytest.mark.parametrize("how", ["queued", "running", "interrupted"])
def test_a_cancelled_batchs_taken_files_go_back_as_failed(ledger: Ledger, how: str) -> None:
    ledger.add_schedule(_nightly())
    a = InboxFile("/lab/inbox/a.svs", 10, OLD)
    batch = _batch(ledger, "/lab/out/2026-03-29", origin="schedule:nightly")
    _taken(ledger, batch, [a])
    if how != "queued":
        assert ledger.claim_next() is not None
    ledger.request_cancel(batch.id)
    if how == "running":
        ledger.finish(batch.id, BatchStatus.CANCELLED, "cancelled")
    elif how == "interrupted":
        assert ledger.requeue_interrupted() == []  # a requested cancel is carried out
    ended = ledger.get(batch.id)
    assert ended is not None and ended.status is BatchStatus.CANCELLED
    (seen,) = ledger.inbox_seen("nightly")
    assert seen.state is InboxState.FAILED and "cancelled" in (seen.last_error or "")


def test_a_requeued_batch_keeps_its_files_taken(ledger: Ledger) -> None:
    ledger.add_schedule(_nightly())
    a = InboxFile("/lab/inbox/a.svs", 10, OLD)
    batch = _batch(ledger, "/lab/out/2026-03-29", origin="schedule:nightly")
    _taken(ledger, batch, [a])
    assert ledger.claim_next() is not None
    assert ledger.requeue_interrupted() == [batch.id]
    assert ledger.inbox_seen("nightly")[0].state is InboxState.TAKEN  # resumed, not retried


# -- schedules that fail, or no longer load ------------------------------------------------


def _corrupt(ledger_url: str, name: str, **columns: Any) -> None:
    """Change a stored schedule behind the ledger's back, as an older version could have
    stored it."""
    engine = create_engine(ledger_url)
    try:
        with engine.begin() as conn:
            sets = ", ".join(f"{c} = :{c}" for c in columns)
            conn.execute(text(f"UPDATE schedules SET {sets} WHERE name = :name"),
                         {**columns, "name": name})  # fmt: skip
    finally:
        engine.dispose()


def test_a_schedule_that_no_longer_loads_is_listed_with_its_reason(
    ledger: Ledger, ledger_url: str
) -> None:
    ledger.add_schedule(_nightly("a-old"))
    ledger.add_schedule(_nightly("b-good"))
    _corrupt(ledger_url, "a-old", settle_s=1e308)
    listed = ledger.schedules()
    assert [r.name for r in listed] == ["a-old", "b-good"]
    broken, good = listed
    assert isinstance(broken, BrokenScheduleRecord) and isinstance(good, ScheduleRecord)
    assert "settle_s" in broken.reason and "\n" not in broken.reason
    assert broken.stored["settle_s"] == 1e308 and broken.stored["cron"] == "0 22 * * *"
    assert ledger.schedule("a-old") == broken
    paused = ledger.set_paused("a-old", True)
    assert isinstance(paused, BrokenScheduleRecord) and paused.stored["paused"] is True
    ledger.remove_schedule("a-old")
    assert [r.name for r in ledger.schedules()] == ["b-good"]


def test_a_schedules_last_error_is_kept_on_it_until_it_runs_well(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.add_schedule(_nightly())
    ledger.schedule_error("nightly", "inbox /lab/inbox is not a folder")
    record = ledger.schedule("nightly")
    assert isinstance(record, ScheduleRecord)
    assert record.last_error == "inbox /lab/inbox is not a folder"
    assert record.last_error_at is not None and record.last_error_at.tzinfo is not None
    ledger.schedule_error("nightly", None)
    cleared = ledger.schedule("nightly")
    assert isinstance(cleared, ScheduleRecord)
    assert (cleared.last_error, cleared.last_error_at) == (None, None)


def test_migrating_a_0002_database_keeps_its_schedules_without_an_error(ledger_url: str) -> None:
    engine = create_engine(ledger_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic(conn), "0002")
            conn.execute(
                text(
                    "INSERT INTO schedules (name, cron, tz, catch_up, inbox, model, out_template,"
                    " options, paused, max_attempts, settle_s, created_at, updated_at)"
                    " VALUES ('old', '0 22 * * *', 'UTC', 'latest', '/in', '/m', '/o/{date}',"
                    " '{}', false, 3, 60.0, :t, :t)"
                ),
                {"t": datetime(2026, 1, 1, tzinfo=UTC)},
            )
        with Ledger.open(ledger_url) as ledger:
            old = ledger.schedule("old")
            assert isinstance(old, ScheduleRecord) and old.last_error is None
            assert ledger.lease() is None
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head_revision()
            command.check(_alembic(conn))  # the models and the migrations agree
    finally:
        engine.dispose()
