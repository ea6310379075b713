"""One schedule's failure is its own: the scheduler's tick over a real SQLite ledger with a
schedule stored before today's bounds, one whose firing hits a bug, one whose inbox is gone,
and a good one that still fires in the same tick; each failure is kept on its schedule, and
run-now on a failing schedule raises an error the API answers with a 4xx."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from slidemill.schemas import InvalidInputError
from slidemill.service import Scheduler
from slidemill.service.errors import ConflictError
from slidemill.service.ledger import (
    BatchStatus,
    BrokenScheduleRecord,
    InboxRecord,
    Ledger,
    ScheduleRecord,
)
from slidemill.service.schedules import (
    CatchUp,
    InboxState,
    InvalidScheduleError,
    Schedule,
    ScheduleFailedError,
)
from tests.service.test_scheduler import Clock, Waker

CREATED = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
AFTER_WINDOW = datetime(2026, 11, 2, 22, 30, tzinfo=UTC)  # the schedules run at 22:00 UTC


class Buggy(Ledger):
    """A real ledger that raises a bug (not one of slidemill's errors) when the scheduler looks
    at the inbox record of a schedule named in `buggy`, as a bug while firing it would."""

    buggy: set[str]

    def inbox_seen(self, name: str) -> list[InboxRecord]:
        if name in self.buggy:
            raise ZeroDivisionError("a bug while firing")
        return super().inbox_seen(name)


@pytest.fixture
def clock() -> Clock:
    return Clock(CREATED)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


@pytest.fixture
def ledger(url: str, clock: Clock) -> Iterator[Buggy]:
    with Buggy.open(url, clock=clock) as opened:
        assert isinstance(opened, Buggy)
        opened.buggy = set()
        yield opened


@pytest.fixture
def scheduler(
    ledger: Ledger, clock: Clock, tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> Scheduler:
    return Scheduler(ledger, (tmp_path, tiny_bundle.parent, slides_dir), Waker(), clock=clock)


def _inbox(tmp_path: Path, name: str, slides_dir: Path) -> Path:
    inbox = tmp_path / name
    inbox.mkdir()
    shutil.copy(slides_dir / "synth-svs.svs", inbox / f"{name}.svs")
    os.utime(inbox / f"{name}.svs", (CREATED.timestamp() - 3600,) * 2)
    return inbox


def _schedule(name: str, inbox: Path, model: Path, out: Path, **changes: Any) -> Schedule:
    fields: dict[str, Any] = {
        "name": name, "cron": "0 22 * * *", "tz": "UTC", "inbox": str(inbox),
        "model": str(model), "out_template": str(out / name / "{date}"),
        "catch_up": CatchUp.LATEST, "settle_s": 60,
    }  # fmt: skip
    return Schedule(**(fields | changes))


def _store_unbounded(url: str, name: str) -> None:
    """What a service before the bounds accepted: a settle time of 1e308 s."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE schedules SET settle_s = 1e308 WHERE name = :n"), {"n": name})
    finally:
        engine.dispose()


@pytest.fixture
def four(
    ledger: Buggy, url: str, tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> dict[str, Path]:
    """a-unbounded (stored before the bounds), b-bug (firing it hits a bug), c-gone (its inbox
    was removed), d-good; in that order, so that the good one is the last of the tick."""
    out = tmp_path / "out"
    inboxes = {n: _inbox(tmp_path, n, slides_dir) for n in ("a-unbounded", "b-bug", "c-gone",
                                                            "d-good")}  # fmt: skip
    for name, inbox in inboxes.items():
        ledger.add_schedule(_schedule(name, inbox, tiny_bundle, out))
    _store_unbounded(url, "a-unbounded")
    shutil.rmtree(inboxes["c-gone"])
    ledger.buggy.add("b-bug")
    return inboxes


def test_the_good_schedule_fires_although_the_ones_before_it_fail(
    ledger: Ledger, scheduler: Scheduler, clock: Clock, four: dict[str, Path]
) -> None:
    clock.now = AFTER_WINDOW
    (batch,) = scheduler.tick()
    record = ledger.get(batch)
    assert record is not None and record.origin == "schedule:d-good"

    by_name = {r.name: r for r in ledger.schedules()}
    unbounded = by_name["a-unbounded"]
    assert isinstance(unbounded, BrokenScheduleRecord) and "settle_s" in unbounded.reason
    bug, gone, good = by_name["b-bug"], by_name["c-gone"], by_name["d-good"]
    assert isinstance(bug, ScheduleRecord) and isinstance(gone, ScheduleRecord)
    assert bug.last_error == "ZeroDivisionError: a bug while firing"
    assert bug.last_error_at == AFTER_WINDOW
    assert gone.last_error is not None and "is not a folder" in gone.last_error
    assert isinstance(good, ScheduleRecord) and good.last_error is None
    # each window passed, failed or not: the next tick does not fire them again
    window = datetime(2026, 11, 2, 22, 0, tzinfo=UTC)
    assert (bug.last_fired, gone.last_fired, good.last_fired) == (window,) * 3
    assert scheduler.tick() == []


def test_run_now_on_a_failing_schedule_is_refused_with_one_line_and_recorded(
    ledger: Buggy, scheduler: Scheduler, clock: Clock, four: dict[str, Path]
) -> None:
    clock.now = AFTER_WINDOW
    with pytest.raises(ScheduleFailedError) as bug:
        scheduler.run_now("b-bug")
    assert isinstance(bug.value, ConflictError)  # the API answers 409
    assert "b-bug" in str(bug.value) and "a bug while firing" in str(bug.value)
    assert "\n" not in str(bug.value)
    with pytest.raises(InvalidScheduleError) as unbounded:
        scheduler.run_now("a-unbounded")
    assert isinstance(unbounded.value, InvalidInputError) and "settle_s" in str(unbounded.value)
    with pytest.raises(InvalidScheduleError, match="not a folder"):
        scheduler.run_now("c-gone")
    gone = ledger.schedule("c-gone")
    assert isinstance(gone, ScheduleRecord) and gone.last_error is not None

    # once the cause is gone, run-now runs and the error is cleared
    ledger.buggy.clear()
    clock.now += timedelta(minutes=1)
    assert scheduler.run_now("b-bug") is not None
    fixed = ledger.schedule("b-bug")
    assert isinstance(fixed, ScheduleRecord) and fixed.last_error is None


def test_two_schedules_into_one_folder_queue_and_the_stopped_ones_files_come_back(
    ledger: Ledger, scheduler: Scheduler, clock: Clock, tmp_path: Path, slides_dir: Path,
    tiny_bundle: Path,
) -> None:  # fmt: skip
    shared = str(tmp_path / "out" / "{date}")
    for name in ("left", "right"):
        ledger.add_schedule(_schedule(name, _inbox(tmp_path, name, slides_dir), tiny_bundle,
                                      tmp_path, out_template=shared))  # fmt: skip
    clock.now = AFTER_WINDOW
    left, right = scheduler.tick()
    assert ledger.get(left).out == ledger.get(right).out  # type: ignore[union-attr]
    first = ledger.claim_next()
    assert first is not None and ledger.claim_next() is None  # the other waits its turn
    # the first could not start after all (another program held the folder): its file is
    # back in its inbox as failed, and the schedule's next run takes it again
    ledger.finish(first.id, BatchStatus.STOPPED, "out: in use by another slidemill run")
    loser = first.origin.removeprefix("schedule:")
    (seen,) = ledger.inbox_seen(loser)
    assert seen.state is InboxState.FAILED and seen.last_error == (
        "out: in use by another slidemill run"
    )
    second = ledger.claim_next()
    assert second is not None and second.id != first.id
    clock.now += timedelta(minutes=1)
    again = scheduler.run_now(loser)
    assert again is not None and len(ledger.slides(again)) == 1
