"""The scheduler's tick on a test-driven clock, over a real SQLite ledger: one batch per window
with the inbox's new slides, catch-up after downtime, a file still being written left for the
next run, a paused schedule letting its windows pass."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from slidemill.service import Scheduler
from slidemill.service.ledger import BatchStatus, Ledger, SlideState
from slidemill.service.schedules import CatchUp, InboxState, Schedule

EVENING = datetime(2026, 11, 2, 20, 0, tzinfo=UTC)  # 21:00 in Berlin; the schedule is at 22:00


class Waker:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def setup(
    tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> tuple[Ledger, Scheduler, Clock, Waker, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    clock = Clock(EVENING)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock=clock)
    waker = Waker()
    roots = (tmp_path, tiny_bundle.parent, slides_dir)
    scheduler = Scheduler(ledger, roots, waker, clock=clock)
    return ledger, scheduler, clock, waker, inbox


def _drop(src: Path, inbox: Path, name: str, at: datetime) -> Path:
    """A slide arriving in the inbox, last written at `at`."""
    path = inbox / name
    shutil.copy(src, path)
    os.utime(path, (at.timestamp(), at.timestamp()))
    return path


def _nightly(inbox: Path, model: Path, out: Path, catch_up: CatchUp) -> Schedule:
    return Schedule(
        name="nightly", cron="0 22 * * *", tz="Europe/Berlin", inbox=str(inbox),
        model=str(model), out_template=str(out / "{date}"), catch_up=catch_up, settle_s=60,
    )  # fmt: skip


def test_one_batch_per_window_with_the_new_slides_and_a_growing_file_waits(
    setup: tuple[Ledger, Scheduler, Clock, Waker, Path],
    slides_dir: Path,
    tiny_bundle: Path,
    tmp_path: Path,
) -> None:
    ledger, scheduler, clock, waker, inbox = setup
    ledger.add_schedule(_nightly(inbox, tiny_bundle, tmp_path / "out", CatchUp.LATEST))
    _drop(slides_dir / "synth-svs.svs", inbox, "a.svs", EVENING - timedelta(hours=1))
    assert scheduler.tick() == []  # before 22:00 Berlin
    clock.now = EVENING + timedelta(hours=1, minutes=1)  # 22:01 Berlin
    growing = _drop(slides_dir / "synth-tiff.tiff", inbox, "b.tiff", clock.now)
    (first,) = scheduler.tick()
    assert scheduler.tick() == []  # the same window never fires twice
    batch = ledger.get(first)
    assert batch is not None and batch.origin == "schedule:nightly"
    assert batch.out == str(tmp_path / "out" / "2026-11-02") and waker.woken == 1
    assert [s.path for s in ledger.slides(first)] == [str(inbox / "a.svs")]  # b.tiff settling

    # the night after: only the file that has settled since is new
    clock.now += timedelta(days=1)
    (second,) = scheduler.tick()
    assert [s.path for s in ledger.slides(second)] == [str(growing)]
    assert ledger.get(second).out.endswith("2026-11-03")  # type: ignore[union-attr]


@pytest.mark.parametrize(("catch_up", "fired"), [("latest", 1), ("all", 1), ("skip", 0)])
def test_after_downtime_the_catch_up_policy_decides(
    setup: tuple[Ledger, Scheduler, Clock, Waker, Path],
    slides_dir: Path,
    tiny_bundle: Path,
    tmp_path: Path,
    catch_up: str,
    fired: int,
) -> None:
    ledger, scheduler, clock, _, inbox = setup
    ledger.add_schedule(_nightly(inbox, tiny_bundle, tmp_path / "out", CatchUp(catch_up)))
    _drop(slides_dir / "synth-svs.svs", inbox, "a.svs", EVENING - timedelta(hours=1))
    clock.now = EVENING + timedelta(days=3, hours=3)  # down: the windows of four nights
    batches = scheduler.tick()
    assert len(batches) == fired  # `all` fires each window; only the first finds new slides
    record = ledger.schedule("nightly")
    assert record is not None and record.last_fired is not None
    assert record.last_fired.astimezone(UTC) == datetime(2026, 11, 5, 21, 0, tzinfo=UTC)
    if batches:
        expected = "2026-11-05" if catch_up == "latest" else "2026-11-02"
        assert ledger.get(batches[0]).out.endswith(expected)  # type: ignore[union-attr]


def test_a_paused_schedule_lets_its_windows_pass_and_run_now_still_runs(
    setup: tuple[Ledger, Scheduler, Clock, Waker, Path],
    slides_dir: Path,
    tiny_bundle: Path,
    tmp_path: Path,
) -> None:
    ledger, scheduler, clock, _, inbox = setup
    ledger.add_schedule(_nightly(inbox, tiny_bundle, tmp_path / "out", CatchUp.LATEST))
    ledger.set_paused("nightly", True)
    _drop(slides_dir / "synth-svs.svs", inbox, "a.svs", EVENING - timedelta(hours=1))
    clock.now = EVENING + timedelta(hours=2)
    assert scheduler.tick() == []
    ledger.set_paused("nightly", False)
    assert scheduler.tick() == []  # the window passed while paused
    batch = scheduler.run_now("nightly")
    assert batch is not None and len(ledger.slides(batch)) == 1
    assert scheduler.run_now("nightly") is None  # taken already


def test_inbox_results_follow_the_batch_and_failures_are_retried(
    setup: tuple[Ledger, Scheduler, Clock, Waker, Path],
    slides_dir: Path,
    tiny_bundle: Path,
    tmp_path: Path,
) -> None:
    ledger, scheduler, _, _, inbox = setup
    ledger.add_schedule(_nightly(inbox, tiny_bundle, tmp_path / "out", CatchUp.LATEST))
    bad = inbox / "bad.svs"
    bad.write_bytes(b"not a slide")
    os.utime(bad, (EVENING.timestamp() - 3600,) * 2)
    first = scheduler.run_now("nightly")
    assert first is not None
    seen = ledger.inbox_seen("nightly")
    ledger.record_slide(first, slide_id="bad", state=SlideState.FAILED, error="bad.svs: no")
    ledger.inbox_result("nightly", seen[0].path, seen[0].size, seen[0].mtime_ns,
                        InboxState.FAILED, "bad.svs: no")  # fmt: skip
    ledger.finish(first, BatchStatus.DONE)
    again = scheduler.run_now("nightly")
    assert again is not None and [s.slide_id for s in ledger.slides(again)] == ["bad"]


def test_an_inbox_link_that_leads_out_of_the_roots_is_neither_hashed_nor_taken(
    setup: tuple[Ledger, Scheduler, Clock, Waker, Path],
    slides_dir: Path,
    tiny_bundle: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ledger, scheduler, clock, _, inbox = setup
    ledger.add_schedule(_nightly(inbox, tiny_bundle, tmp_path / "out", CatchUp.LATEST))
    secret = _drop(slides_dir / "synth-svs.svs", tmp_path_factory.mktemp("outside"), "s.svs",
                   EVENING - timedelta(hours=2))  # fmt: skip
    (inbox / "link.svs").symlink_to(secret)  # outside every root
    _drop(slides_dir / "synth-tiff.tiff", inbox, "good.tiff", EVENING - timedelta(hours=1))
    clock.now = EVENING + timedelta(hours=1, minutes=1)
    (batch,) = scheduler.tick()
    assert [s.path for s in ledger.slides(batch)] == [str(inbox / "good.tiff")]
    assert [f.path for f in ledger.inbox_seen("nightly")] == [str(inbox / "good.tiff")]
