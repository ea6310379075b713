"""The scheduling core, pure: cron windows on a schedule's wall clock (DST both ways), catch-up
after downtime under a clock the test drives, output folders, and the inbox's decisions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slidemill.schemas.errors import InvalidInputError
from slidemill.service.errors import ServiceError
from slidemill.service.schedules import (
    MAX_CATCH_UP,
    CatchUp,
    InboxFile,
    InboxState,
    InvalidScheduleError,
    Schedule,
    file_sha256,
    next_window,
    output_folder,
    scan,
    take,
    windows_due,
)

BERLIN = ZoneInfo("Europe/Berlin")


def _schedule(**changes: Any) -> Schedule:
    fields: dict[str, Any] = {
        "name": "nightly",
        "cron": "0 22 * * *",
        "tz": "Europe/Berlin",
        "inbox": "/lab/inbox",
        "model": "/models/prostate",
        "out_template": "/lab/out/{date}",
    }
    return Schedule(**(fields | changes))


def _berlin(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=BERLIN).astimezone(UTC)


def _local(windows: list[datetime]) -> list[str]:
    return [w.astimezone(BERLIN).strftime("%m-%d %H:%M%z") for w in windows]


class DrivenClock:
    """The service's check loop, with a clock the test moves: each `check` fires what
    `windows_due` says and records it as the ledger would (`last_fired`)."""

    def __init__(self, schedule: Schedule, created_at: datetime) -> None:
        self.schedule = schedule
        self.created_at = created_at
        self.last_fired: datetime | None = None
        self.fired: list[datetime] = []

    def check(self, now: datetime) -> list[datetime]:
        due = windows_due(self.schedule, self.last_fired, self.created_at, now)
        self.fired += due
        if due:
            self.last_fired = max(due)
        # every window up to now is passed, fired or not (skip/latest pass the rest over)
        passed = windows_due(replace(self.schedule, catch_up=CatchUp.LATEST), self.last_fired,
                             self.created_at, now)  # fmt: skip
        if passed:
            self.last_fired = passed[0]
        return due


# -- windows ---------------------------------------------------------------------------------


def test_a_schedule_checked_every_few_minutes_fires_once_per_window() -> None:
    created = _berlin(2026, 1, 10, 12, 0)
    clock = DrivenClock(_schedule(), created)
    now = created
    while now < _berlin(2026, 1, 13, 12, 0):
        now += timedelta(minutes=3)
        clock.check(now)
    assert _local(clock.fired) == ["01-10 22:00+0100", "01-11 22:00+0100", "01-12 22:00+0100"]


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [
        (CatchUp.LATEST, ["01-14 22:00+0100"]),
        (
            CatchUp.ALL,
            ["01-11 22:00+0100", "01-12 22:00+0100", "01-13 22:00+0100", "01-14 22:00+0100"],
        ),
        (CatchUp.SKIP, []),
    ],
)
def test_catch_up_after_downtime(catch_up: CatchUp, expected: list[str]) -> None:
    created = _berlin(2026, 1, 10, 12, 0)
    clock = DrivenClock(_schedule(catch_up=catch_up), created)
    assert _local(clock.check(_berlin(2026, 1, 10, 22, 0, 30))) == ["01-10 22:00+0100"]
    # the service is down from the 10th at 23:00 to the 15th at 08:00
    assert _local(clock.check(_berlin(2026, 1, 15, 8, 0))) == expected
    assert clock.check(_berlin(2026, 1, 15, 8, 1)) == []  # nothing fires twice
    assert _local(clock.check(_berlin(2026, 1, 15, 22, 1))) == ["01-15 22:00+0100"]


def test_skip_still_fires_a_window_within_its_grace() -> None:
    schedule = _schedule(catch_up=CatchUp.SKIP)
    created = _berlin(2026, 1, 10, 12, 0)
    assert windows_due(schedule, None, created, _berlin(2026, 1, 10, 22, 4)) == [
        _berlin(2026, 1, 10, 22, 0)
    ]
    assert windows_due(schedule, None, created, _berlin(2026, 1, 10, 22, 6)) == []


def test_catch_up_all_is_capped_and_the_rest_come_at_the_next_check() -> None:
    schedule = _schedule(cron="0 * * * *", catch_up=CatchUp.ALL)
    created = _berlin(2026, 1, 1, 0, 30)
    now = created + timedelta(hours=MAX_CATCH_UP + 10)
    first = windows_due(schedule, None, created, now)
    assert len(first) == MAX_CATCH_UP
    rest = windows_due(schedule, first[-1], created, now)
    assert len(rest) == 10 and rest[0] == first[-1] + timedelta(hours=1)


@pytest.mark.parametrize(
    ("cron", "days", "expected"),
    [
        # spring forward on 29 March 2026: 02:30 does not exist; it fires once, at 03:30 CEST
        (
            "30 2 * * *",
            (27, 3, 31, 3),
            ["03-28 02:30+0100", "03-29 03:30+0200", "03-30 02:30+0200"],
        ),
        (
            "0 22 * * *",
            (27, 3, 31, 3),
            ["03-27 22:00+0100", "03-28 22:00+0100", "03-29 22:00+0200", "03-30 22:00+0200"],
        ),
        # fall back on 25 October 2026: 02:30 happens twice; it fires once, the first time
        (
            "30 2 * * *",
            (23, 10, 27, 10),
            ["10-24 02:30+0200", "10-25 02:30+0200", "10-26 02:30+0100"],
        ),
        (
            "0 22 * * *",
            (23, 10, 27, 10),
            ["10-23 22:00+0200", "10-24 22:00+0200", "10-25 22:00+0100", "10-26 22:00+0100"],
        ),
    ],
)
def test_dst_changes_fire_each_window_once(
    cron: str, days: tuple[int, int, int, int], expected: list[str]
) -> None:
    schedule = _schedule(cron=cron, catch_up=CatchUp.ALL)
    start = _berlin(2026, days[1], days[0], 12, 0)
    end = _berlin(2026, days[3], days[2], 0, 0)
    assert _local(windows_due(schedule, None, start, end)) == expected
    # and checked every few minutes across the change, each fires once
    clock = DrivenClock(replace(schedule, catch_up=CatchUp.LATEST), start)
    now = start
    while now < end:
        now += timedelta(minutes=4)
        clock.check(now)
    assert _local(clock.fired) == expected


def test_a_skipped_wall_time_and_the_one_it_shifts_onto_are_one_window() -> None:
    schedule = _schedule(cron="30 2,3 * * *", catch_up=CatchUp.ALL)
    due = windows_due(schedule, None, _berlin(2026, 3, 29, 0, 0), _berlin(2026, 3, 29, 12, 0))
    assert _local(due) == ["03-29 03:30+0200"]


def test_next_window_is_strictly_after() -> None:
    schedule = _schedule()
    at = _berlin(2026, 3, 29, 22, 0)
    assert next_window(schedule, at - timedelta(seconds=1)) == at
    assert next_window(schedule, at) == _berlin(2026, 3, 30, 22, 0)
    assert next_window(_schedule(cron="30 2 * * *"), _berlin(2026, 3, 29, 0, 0)) == _berlin(
        2026, 3, 29, 3, 30
    )


def test_output_folder_uses_the_local_date_and_time() -> None:
    schedule = _schedule(out_template="/lab/out/{name}/{date}_{time}")
    window = datetime(2026, 3, 29, 22, 30, tzinfo=UTC)  # 00:30 on the 30th in Berlin
    assert output_folder(schedule, window) == "/lab/out/nightly/2026-03-30_0030"


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(InvalidScheduleError, match="no time zone"):
        windows_due(_schedule(), None, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"name": "Nightly Run"}, "schedule name"),
        ({"name": "-x"}, "schedule name"),
        ({"cron": "0 22 * *"}, "5-field"),
        ({"cron": "0 0 22 * * *"}, "5-field"),
        ({"cron": "61 22 * * *"}, "5-field"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"tz": "Mars/Olympus"}, "time zone"),
        ({"tz": "../etc/passwd"}, "time zone"),
        ({"catch_up": "some"}, "catch_up"),
        ({"out_template": "/lab/out"}, "needs {date}"),
        ({"out_template": "/lab/out/{date}/{slide}"}, "{slide}"),
        ({"out_template": "/lab/out/{date:%Y}"}, "{date}"),
        ({"out_template": "/lab/out/{date"}, "braces"),
        ({"options": {"tile_sise": 224}}, "unknown run options tile_sise"),
        ({"options": {"out": "/x"}}, "unknown run options out"),
        ({"options": {"batch_size": float("nan")}}, "not JSON"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"settle_s": -1}, "settle_s"),
        ({"inbox": " "}, "inbox"),
    ],
)
def test_a_malformed_schedule_is_refused_naming_the_field(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidScheduleError) as caught:
        _schedule(**changes)
    assert named in str(caught.value)
    assert isinstance(caught.value, InvalidInputError) and isinstance(caught.value, ServiceError)


def test_a_schedule_keeps_a_copy_of_its_options() -> None:
    options = {"batch_size": 32}
    schedule = _schedule(options=options, catch_up="all")
    options["batch_size"] = 1
    assert schedule.options == {"batch_size": 32} and schedule.catch_up is CatchUp.ALL
    with pytest.raises(TypeError):
        schedule.options["batch_size"] = 2  # type: ignore[index]


_CRONS = ["30 2 * * *", "0 22 * * *", "*/20 1-3 * * *", "15 3 * * 0", "0 0 1 * *", "0 * * * *"]
_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]


@settings(max_examples=150, deadline=None)
@given(
    cron=st.sampled_from(_CRONS),
    tz=st.sampled_from(_ZONES),
    catch_up=st.sampled_from(list(CatchUp)),
    start=st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    span_min=st.integers(0, 60 * 24 * 20),
)
def test_windows_are_distinct_ordered_and_in_the_interval(
    cron: str, tz: str, catch_up: CatchUp, start: datetime, span_min: int
) -> None:
    schedule = _schedule(cron=cron, tz=tz, catch_up=catch_up)
    now = start + timedelta(minutes=span_min)
    due = windows_due(schedule, start, start - timedelta(days=1), now)
    assert due == sorted(set(due))
    assert all(start < w <= now and w.tzinfo is not None for w in due)
    if catch_up is not CatchUp.ALL:
        assert len(due) <= 1
    if catch_up is CatchUp.ALL:
        # the same windows as stepping next_window from the start
        stepped: list[datetime] = []
        at = start
        while len(stepped) < MAX_CATCH_UP and (at := next_window(schedule, at)) <= now:
            stepped.append(at)
        assert due == stepped


# -- the inbox -------------------------------------------------------------------------------

NOW = datetime(2026, 1, 10, 22, 0, tzinfo=UTC)
_NS = 1_000_000_000
OLD = int((NOW - timedelta(hours=2)).timestamp()) * _NS


@dataclass(frozen=True)
class Seen:
    path: str
    size: int
    mtime_ns: int
    state: str
    attempts: int = 1
    last_error: str | None = None
    sha256: str | None = None


def _seen_after_take(files: tuple[InboxFile, ...], state: str = "done") -> list[Seen]:
    return [Seen(f.path, f.size, f.mtime_ns, state, sha256=f.sha256) for f in files]


def test_new_settled_files_are_taken_and_not_again() -> None:
    listing = [InboxFile("/in/a.svs", 100, OLD), InboxFile("/in/b.svs", 200, OLD)]
    first = take(listing, [], NOW, 60, 3)
    assert first.take == tuple(listing)
    second = take(listing, _seen_after_take(first.take), NOW, 60, 3)
    assert second.take == () and second.left == tuple(listing)
    in_flight = take(listing, _seen_after_take(first.take, "taken"), NOW, 60, 3)
    assert in_flight.take == ()
    # a file rewritten in place is a new key: taken again
    changed = [listing[0], InboxFile("/in/b.svs", 250, OLD + _NS)]
    assert take(changed, _seen_after_take(first.take), NOW, 60, 3).new == (changed[1],)


def test_a_file_still_growing_is_left_then_taken_the_next_run() -> None:
    growing = InboxFile("/in/c.svs", 10, int((NOW - timedelta(seconds=5)).timestamp()) * _NS)
    first = take([growing], [], NOW, 60, 3)
    assert first.take == () and first.settling == (growing,)
    later = NOW + timedelta(minutes=10)
    grown = InboxFile("/in/c.svs", 5000, int((NOW + timedelta(seconds=30)).timestamp()) * _NS)
    assert take([grown], [], NOW + timedelta(seconds=40), 60, 3).settling == (grown,)
    assert take([grown], [], later, 60, 3).take == (grown,)


def test_a_failed_file_is_retried_up_to_the_limit_then_held() -> None:
    f = InboxFile("/in/bad.svs", 100, OLD)
    seen: list[Seen] = []
    taken_runs = 0
    for _ in range(5):
        decision = take([f], seen, NOW, 60, 3)
        if decision.hold:
            assert decision.hold[0].reason == "unreadable: truncated TIFF"
            seen = [Seen(f.path, f.size, f.mtime_ns, InboxState.HELD, taken_runs, "x")]
            continue
        if decision.take:
            taken_runs += 1
            seen = [Seen(f.path, f.size, f.mtime_ns, "failed", taken_runs,
                         "unreadable: truncated TIFF")]  # fmt: skip
            continue
        assert decision.left == (f,)
    assert taken_runs == 3
    assert take([f], seen, NOW, 60, 3).take == ()


def test_a_moved_file_is_not_taken_twice() -> None:
    old = Seen("/in/a.svs", 100, OLD, "done", sha256="ab" * 32)
    moved = InboxFile("/in/sub/a.svs", 100, OLD + 7)  # copied: a new mtime, same content
    other = InboxFile("/in/other.svs", 100, OLD + 9)  # same size, other content
    hashed: list[str] = []

    def digest(f: InboxFile) -> str:
        hashed.append(f.path)
        return "ab" * 32 if f.path == moved.path else "cd" * 32

    unrelated = InboxFile("/in/big.svs", 999, OLD)
    decision = take([other, moved, unrelated], [old], NOW, 60, 3, digest=digest)
    assert [(m.old, m.new.path) for m in decision.moved] == [(("/in/a.svs", 100, OLD), moved.path)]
    assert decision.take == (replace(other, sha256="cd" * 32), unrelated)  # the hash is kept
    assert decision.left == (replace(moved, sha256="ab" * 32),)  # done already: not again
    assert hashed == [other.path, moved.path]  # never the file of another size
    # once its move is found, nothing is left to match: no more hashing
    hashed.clear()
    assert take([moved, other], [old], NOW, 60, 3, digest=digest).new == (other,)
    assert hashed == [moved.path]
    # a rename keeps the mtime: recognised without a recorded hash
    renamed = InboxFile("/in/renamed.svs", 100, OLD)
    plain = Seen("/in/a.svs", 100, OLD, "failed", attempts=1, last_error="x")
    again = take([renamed], [plain], NOW, 60, 3)
    assert [m.new for m in again.moved] == [renamed] and again.retry == (renamed,)


def test_scan_lists_slide_files_and_hashes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.svs").write_bytes(b"slide")
    (tmp_path / "notes.txt").write_text("not a slide")
    files = scan(tmp_path)
    assert [Path(f.path).name for f in files] == ["a.svs"]
    assert files[0].size == 5
    assert file_sha256(files[0]) == hashlib.sha256(b"slide").hexdigest()
    with pytest.raises(InvalidScheduleError, match="not a folder"):
        scan(tmp_path / "missing")
