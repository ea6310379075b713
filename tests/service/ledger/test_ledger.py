"""The job ledger against SQLite (a file) and a real PostgreSQL, the same tests on both."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text

from slidemill.service.errors import ConflictError, LedgerError, NotFoundError
from slidemill.service.ledger import (
    BatchRecord,
    BatchStatus,
    DuplicateScheduleError,
    InvalidTransitionError,
    Ledger,
    LedgerInputError,
    LedgerUnavailableError,
    NotRetryableError,
    ScheduleRecord,
    SlideState,
    UnknownBatchError,
    UnknownInboxFileError,
    UnknownScheduleError,
    UnknownSlideError,
)
from slidemill.service.schedules import CatchUp, InboxFile, InboxState, Schedule, take
from tests.service.ledger.conftest import Clock

REQUEST = {"model": "/models/prostate", "out": "/out/today", "options": {"tile_size": 224}}
T = TypeVar("T")


def _batch(ledger: Ledger, n: int = 3, *, priority: int = 0) -> BatchRecord:
    """A batch of `n` slides into a folder of its own (batches sharing one wait for each other:
    `test_collisions`)."""
    slides = [(f"s{i}", f"/slides/s{i}.svs") for i in range(n)]
    out = f"/out/{uuid4().hex}"
    return ledger.create_batch(request=REQUEST, out=out, slides=slides, priority=priority)


def _in_threads(n: int, work: Callable[[], T]) -> list[T]:
    """`work` in `n` threads released together; their results, or the first error."""
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            result = work()
            with lock:
                results.append(result)
        except BaseException as err:
            with lock:
                errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    return results


# -- the schema ----------------------------------------------------------------------------


def test_migrations_create_the_schema_from_empty_and_run_once(ledger_url: str) -> None:
    head = ScriptDirectory(str(files("slidemill.service.ledger") / "migrations"))
    assert "0001" in {s.revision for s in head.walk_revisions()}
    engine = create_engine(ledger_url)
    try:
        assert inspect(engine).get_table_names() == []
        with Ledger.open(ledger_url) as ledger:
            batch = _batch(ledger)
        schema = inspect(engine)
        assert {"alembic_version", "batches", "slides"} <= set(schema.get_table_names())
        indexes = {tuple(i["column_names"]) for i in schema.get_indexes("batches")}
        assert {("status", "priority", "created_at"), ("updated_at",)} <= indexes
        with engine.connect() as conn:
            version = conn.scalar(text("SELECT version_num FROM alembic_version"))
        assert version == head.get_current_head()

        # opened again, and by two threads at once: nothing to do, nothing lost
        def reopen() -> BatchRecord | None:
            with Ledger.open(ledger_url) as again:
                return again.get(batch.id)

        assert _in_threads(2, reopen) == [batch, batch]
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        engine.dispose()


def test_migrating_an_empty_database_from_two_threads_at_once(ledger_url: str) -> None:
    def open_and_close() -> bool:
        Ledger.open(ledger_url).close()
        return True

    assert _in_threads(2, open_and_close) == [True, True]


def test_a_sqlite_ledger_is_a_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite"  # its folder is made
    Ledger.open(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "mysql://db/ledger", "not a url"]
)
def test_a_ledger_url_it_cannot_keep_is_refused(url: str) -> None:
    with pytest.raises(LedgerInputError):
        Ledger.open(url)


def test_a_database_it_cannot_reach_is_named_with_the_password_masked() -> None:
    port = _closed_port()
    with pytest.raises(LedgerUnavailableError) as caught:
        Ledger.open(f"postgresql://lab:s3cret@127.0.0.1:{port}/ledger")  # psycopg 3 implied
    assert f"postgresql+psycopg://lab:***@127.0.0.1:{port}/ledger" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


# -- batches -------------------------------------------------------------------------------


def test_create_get_and_the_slides_in_submission_order(ledger: Ledger, clock: Clock) -> None:
    slides = [("b", "/s/b.svs"), ("a", "/s/a.svs"), ("c", "/s/c.tiff")]
    batch = ledger.create_batch(
        request=REQUEST, out="/out/x", slides=slides, origin="schedule:nightly", priority=5
    )
    assert len(batch.id) == 32 and int(batch.id, 16) >= 0
    assert (batch.status, batch.origin, batch.priority, batch.out) == (
        BatchStatus.QUEUED, "schedule:nightly", 5, "/out/x",
    )  # fmt: skip
    assert batch.request == REQUEST
    assert (batch.n_slides, batch.n_done, batch.n_failed, batch.n_skipped) == (3, 0, 0, 0)
    assert batch.n_pending == 3
    assert batch.started_at is None and batch.finished_at is None and batch.error is None
    assert batch.created_at.tzinfo is UTC and batch.created_at < clock()
    assert ledger.get(batch.id) == batch

    rows = ledger.slides(batch.id)
    assert [(s.slide_id, s.path) for s in rows] == slides
    assert {s.state for s in rows} == {SlideState.PENDING}
    assert all(s.batch_id == batch.id and s.updated_at.tzinfo is UTC for s in rows)


def test_a_batch_is_refused_with_a_slide_id_twice_or_a_request_that_is_not_json(
    ledger: Ledger,
) -> None:
    with pytest.raises(LedgerInputError, match="twice"):
        ledger.create_batch(request={}, out="/o", slides=[("a", "/1"), ("a", "/2")])
    with pytest.raises(LedgerInputError, match="not JSON"):
        ledger.create_batch(request={"when": datetime.now(UTC)}, out="/o", slides=[("a", "/1")])
    assert ledger.list() == []


def test_list_newest_first_with_each_filter(ledger: Ledger, clock: Clock) -> None:
    old = _batch(ledger)
    middle_from = clock.advance(timedelta(days=1))
    middle = _batch(ledger)
    new_from = clock.advance(timedelta(days=1))
    new = _batch(ledger)

    assert ledger.list() == [new, middle, old]
    assert ledger.list(limit=2) == [new, middle]
    assert ledger.list(since=middle_from) == [new, middle]
    assert ledger.list(until=new_from) == [middle, old]
    assert ledger.list(since=middle_from, until=new_from) == [middle]
    # any time zone means the same instant
    east = middle_from.astimezone(timezone(timedelta(hours=1)))
    assert ledger.list(since=east) == [new, middle]

    running = ledger.claim_next()
    assert running is not None and running.id == old.id
    assert [b.id for b in ledger.list(status=BatchStatus.RUNNING)] == [old.id]
    assert ledger.list(status=BatchStatus.QUEUED) == [new, middle]
    assert ledger.list(status=BatchStatus.DONE) == []

    # polling: what changed at or after the last `updated_at` seen
    seen = max(b.updated_at for b in ledger.list())
    assert [b.id for b in ledger.list(updated_since=seen)] == [old.id]
    ledger.record_slide(middle.id, slide_id="s0", state=SlideState.DONE)
    assert {b.id for b in ledger.list(updated_since=seen + timedelta(microseconds=1))} == {
        middle.id
    }

    with pytest.raises(LedgerInputError, match="time zone"):
        ledger.list(since=datetime(2026, 1, 1))  # naive: which zone?
    with pytest.raises(LedgerInputError):
        ledger.list(limit=0)


# -- claiming ------------------------------------------------------------------------------


def test_claim_next_takes_the_highest_priority_then_the_oldest(
    ledger: Ledger, clock: Clock
) -> None:
    assert ledger.claim_next() is None
    low_old = _batch(ledger, priority=0)
    high_new = _batch(ledger, priority=10)
    low_new = _batch(ledger, priority=0)
    high_newer = _batch(ledger, priority=10)

    order = []
    while (claimed := ledger.claim_next()) is not None:
        assert claimed.status is BatchStatus.RUNNING
        assert claimed.started_at is not None and claimed.started_at.tzinfo is UTC
        assert claimed.started_at == claimed.updated_at >= claimed.created_at
        order.append(claimed.id)
    assert order == [high_new.id, high_newer.id, low_old.id, low_new.id]
    assert ledger.list(status=BatchStatus.QUEUED) == []


def test_threads_claiming_at_once_never_take_the_same_batch(ledger: Ledger) -> None:
    created = {_batch(ledger, n=1, priority=i % 3).id for i in range(20)}

    def claim_all() -> list[str]:
        mine = []
        while (claimed := ledger.claim_next()) is not None:
            mine.append(claimed.id)
        return mine

    taken = [batch_id for mine in _in_threads(4, claim_all) for batch_id in mine]
    assert len(taken) == len(set(taken)) == 20
    assert set(taken) == created
    assert {b.status for b in ledger.list()} == {BatchStatus.RUNNING}


# -- slides --------------------------------------------------------------------------------


def test_record_slide_keeps_the_result_and_counts_each_slide_once(
    ledger: Ledger, clock: Clock
) -> None:
    batch = _batch(ledger, n=4)
    ledger.claim_next()
    for _ in range(2):  # the same result twice, as a resumed batch may publish it again
        ledger.record_slide(
            batch.id,
            slide_id="s0",
            state=SlideState.DONE,
            label="tumour",
            class_names=["normal", "tumour"],
            probabilities=[0.25, 0.75],
            n_tiles=812,
            timings={"tissue": 0.5, "encode": 12.25},
            output="/out/today/s0",
            flags=("pen_marks", "blurry"),
        )
    ledger.record_slide(batch.id, slide_id="s1", state=SlideState.FAILED, error="unreadable")
    ledger.record_slide(batch.id, slide_id="s2", state=SlideState.SKIPPED, error="no tissue")

    now = ledger.get(batch.id)
    assert now is not None
    assert (now.n_slides, now.n_done, now.n_failed, now.n_skipped, now.n_pending) == (
        4, 1, 1, 1, 1,
    )  # fmt: skip
    assert now.updated_at > batch.updated_at
    s0, s1, s2, s3 = ledger.slides(batch.id)
    assert (s0.state, s0.label, s0.n_tiles, s0.output) == (
        SlideState.DONE, "tumour", 812, "/out/today/s0",
    )  # fmt: skip
    assert s0.class_names == ("normal", "tumour") and s0.probabilities == (0.25, 0.75)
    assert s0.flags == ("pen_marks", "blurry") and s1.flags == () and s3.flags == ()
    assert s0.timings == {"tissue": 0.5, "encode": 12.25}
    assert (s1.state, s1.error, s2.state, s2.error) == (
        SlideState.FAILED, "unreadable", SlideState.SKIPPED, "no tissue",
    )  # fmt: skip
    assert s3.state is SlideState.PENDING

    # a slide recorded again with another outcome moves between the counts
    ledger.record_slide(batch.id, slide_id="s1", state=SlideState.DONE, label="normal")
    again = ledger.get(batch.id)
    assert again is not None and (again.n_done, again.n_failed) == (2, 0)


def test_threads_recording_slides_of_one_batch_keep_exact_counts(ledger: Ledger) -> None:
    """Four runner threads publish slides of one batch in lockstep, each write counting the
    slide rows while the others write theirs: no count may be lost."""
    batch = _batch(ledger, n=20)
    ledger.claim_next()
    lanes = iter(range(4))
    lock = threading.Lock()
    step = threading.Barrier(4)

    def record_lane() -> int:
        with lock:
            lane = next(lanes)
        for i in range(lane, 20, 4):
            step.wait(timeout=30)
            state = SlideState.FAILED if i % 5 == 0 else SlideState.DONE
            ledger.record_slide(batch.id, slide_id=f"s{i}", state=state, error="x")
        return lane

    assert sorted(_in_threads(4, record_lane)) == [0, 1, 2, 3]
    now = ledger.get(batch.id)
    assert now is not None and (now.n_done, now.n_failed, now.n_pending) == (16, 4, 0)


def test_record_slide_refuses_what_it_cannot_keep(ledger: Ledger) -> None:
    batch = _batch(ledger, n=1)
    with pytest.raises(UnknownSlideError):
        ledger.record_slide(batch.id, slide_id="elsewhere", state=SlideState.DONE)
    with pytest.raises(LedgerInputError, match="2 probabilities for 3 class names"):
        ledger.record_slide(
            batch.id,
            slide_id="s0",
            state=SlideState.DONE,
            class_names=["a", "b", "c"],
            probabilities=[0.5, 0.5],
        )
    with pytest.raises(LedgerInputError, match="finite"):
        ledger.record_slide(
            batch.id, slide_id="s0", state=SlideState.DONE, probabilities=[float("nan")]
        )
    assert ledger.slides(batch.id)[0].state is SlideState.PENDING


# -- finishing, restarts, cancelling, retrying ---------------------------------------------


def test_finish_ends_a_batch_once(ledger: Ledger) -> None:
    batch = _batch(ledger)
    ledger.claim_next()
    ledger.finish(batch.id, BatchStatus.STOPPED, "no workers for 300 s")
    ended = ledger.get(batch.id)
    assert ended is not None
    assert (ended.status, ended.error) == (BatchStatus.STOPPED, "no workers for 300 s")
    assert ended.finished_at is not None and ended.finished_at == ended.updated_at
    with pytest.raises(InvalidTransitionError, match="already finished"):
        ledger.finish(batch.id, BatchStatus.DONE)
    with pytest.raises(InvalidTransitionError, match="not running"):
        ledger.finish(_batch(ledger).id, BatchStatus.RUNNING)


def test_requeue_interrupted_puts_running_batches_back(ledger: Ledger) -> None:
    first, second, done, queued = (_batch(ledger) for _ in range(4))
    for _ in range(3):
        ledger.claim_next()
    ledger.finish(done.id, BatchStatus.DONE)

    assert ledger.requeue_interrupted() == [first.id, second.id]
    assert ledger.requeue_interrupted() == []
    assert {b.id: b.status for b in ledger.list()} == {
        first.id: BatchStatus.QUEUED,
        second.id: BatchStatus.QUEUED,
        done.id: BatchStatus.DONE,
        queued.id: BatchStatus.QUEUED,
    }
    claimed = [ledger.claim_next() for _ in range(3)]
    assert [c.id for c in claimed if c is not None] == [first.id, second.id, queued.id]


def test_a_resumed_batch_keeps_its_first_start(ledger: Ledger, clock: Clock) -> None:
    batch = _batch(ledger)
    started = ledger.claim_next()
    assert started is not None and started.started_at is not None
    clock.advance(timedelta(hours=1))
    ledger.requeue_interrupted()
    resumed = ledger.claim_next()
    assert resumed is not None and resumed.id == batch.id
    assert resumed.started_at == started.started_at < resumed.updated_at


def test_request_cancel_queued_at_once_running_through_the_runner(ledger: Ledger) -> None:
    running, queued = _batch(ledger), _batch(ledger)
    ledger.claim_next()

    cancelled = ledger.request_cancel(queued.id)
    assert cancelled is not None and cancelled.status is BatchStatus.CANCELLED
    assert cancelled.finished_at is not None and cancelled.error
    assert ledger.cancel_requested(queued.id) is False  # nothing left to stop

    asked = ledger.request_cancel(running.id)
    assert asked is not None
    assert (asked.status, asked.cancel_requested) == (BatchStatus.RUNNING, True)
    assert ledger.cancel_requested(running.id) is True
    assert ledger.request_cancel(running.id) == asked  # asking twice changes nothing
    ledger.finish(running.id, BatchStatus.CANCELLED, "cancelled")
    assert ledger.request_cancel(running.id) == ledger.get(running.id)

    # a cancel asked for before the service died is honoured at its next start
    doomed = _batch(ledger)
    ledger.claim_next()
    ledger.request_cancel(doomed.id)
    assert ledger.requeue_interrupted() == []
    ended = ledger.get(doomed.id)
    assert ended is not None and ended.status is BatchStatus.CANCELLED


def test_retry_failed_queues_a_new_batch_of_the_failed_slides(ledger: Ledger) -> None:
    batch = _batch(ledger, n=4, priority=7)
    ledger.claim_next()
    with pytest.raises(NotRetryableError, match="running"):
        ledger.retry_failed(batch.id)
    for slide_id, state in [("s0", "failed"), ("s1", "done"), ("s2", "skipped"), ("s3", "failed")]:
        ledger.record_slide(batch.id, slide_id=slide_id, state=SlideState(state), error="e")
    ledger.finish(batch.id, BatchStatus.DONE)

    retry = ledger.retry_failed(batch.id)
    assert retry is not None and retry.id != batch.id
    assert (retry.status, retry.origin, retry.priority, retry.out) == (
        BatchStatus.QUEUED, f"retry:{batch.id}", 7, batch.out,
    )  # fmt: skip
    assert retry.request == batch.request
    assert [(s.slide_id, s.path, s.state) for s in ledger.slides(retry.id)] == [
        ("s0", "/slides/s0.svs", SlideState.PENDING),
        ("s3", "/slides/s3.svs", SlideState.PENDING),
    ]
    assert retry.n_slides == 2
    old = ledger.get(batch.id)
    assert old is not None and old.n_failed == 2  # the old batch stays as it ended

    ledger.claim_next()
    for slide_id in ("s0", "s3"):
        ledger.record_slide(retry.id, slide_id=slide_id, state=SlideState.DONE)
    ledger.finish(retry.id, BatchStatus.DONE)
    with pytest.raises(NotRetryableError, match="no failed slides"):
        ledger.retry_failed(retry.id)


def test_an_unknown_id(ledger: Ledger) -> None:
    unknown = "0" * 32
    _batch(ledger)
    assert ledger.get(unknown) is None
    assert ledger.slides(unknown) == []
    assert ledger.request_cancel(unknown) is None
    assert ledger.cancel_requested(unknown) is False
    assert ledger.retry_failed(unknown) is None
    with pytest.raises(UnknownBatchError):
        ledger.record_slide(unknown, slide_id="s0", state=SlideState.DONE)
    with pytest.raises(UnknownBatchError):
        ledger.finish(unknown, BatchStatus.DONE)


def test_the_errors_say_how_the_api_answers_them() -> None:
    assert issubclass(UnknownBatchError, LedgerError) and issubclass(
        UnknownBatchError, NotFoundError
    )
    assert issubclass(NotRetryableError, ConflictError)
    assert issubclass(InvalidTransitionError, ConflictError)


# -- schedules and their inbox -------------------------------------------------------------


def _nightly(name: str = "nightly", **changes: Any) -> Schedule:
    fields: dict[str, Any] = {
        "name": name,
        "cron": "0 22 * * *",
        "tz": "Europe/Berlin",
        "inbox": "/lab/inbox",
        "model": "/models/prostate",
        "out_template": "/lab/out/{date}",
        "options": {"batch_size": 32},
        "catch_up": CatchUp.ALL,
        "max_attempts": 2,
        "settle_s": 30.0,
    }
    return Schedule(**(fields | changes))


def head_revision() -> str:
    """The newest migration's revision."""
    head = ScriptDirectory(str(files("slidemill.service.ledger") / "migrations")).get_current_head()
    assert head is not None
    return head


def _alembic(conn: Connection) -> Config:
    """Alembic over `conn`, as `Ledger.open` configures it (in code, no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(files("slidemill.service.ledger") / "migrations"))
    config.attributes["connection"] = conn
    return config


def test_migrating_a_0001_database_keeps_its_batches_and_adds_schedules(ledger_url: str) -> None:
    engine = create_engine(ledger_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic(conn), "0001")
            conn.execute(
                text(
                    "INSERT INTO batches (id, origin, status, priority, out, request, created_at,"
                    " updated_at, cancel_requested, n_slides, n_done, n_failed, n_skipped)"
                    " VALUES ('" + "a" * 32 + "', 'api', 'done', 0, '/out', '{}',"
                    " :t, :t, false, 0, 0, 0, 0)"
                ),
                {"t": datetime(2026, 1, 1, tzinfo=UTC)},
            )
        assert "schedules" not in inspect(engine).get_table_names()
        with Ledger.open(ledger_url) as ledger:
            old = ledger.get("a" * 32)
            assert old is not None and old.status is BatchStatus.DONE
            assert ledger.add_schedule(_nightly()).name == "nightly"
        assert {"schedules", "inbox_files"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head_revision()
            # the models and the migrations agree: autogenerate finds nothing to add
            command.check(_alembic(conn))
    finally:
        engine.dispose()


def test_add_list_get_pause_and_remove_a_schedule(ledger: Ledger, clock: Clock) -> None:
    added = ledger.add_schedule(_nightly())
    assert added.schedule == _nightly() and added.last_fired is None
    assert added.created_at == added.updated_at and added.created_at.tzinfo is not None
    ledger.add_schedule(_nightly("a-first", catch_up=CatchUp.SKIP, paused=True))
    assert [r.name for r in ledger.schedules()] == ["a-first", "nightly"]
    assert ledger.schedule("nightly") == added
    assert ledger.schedule("missing") is None
    with pytest.raises(DuplicateScheduleError, match="nightly exists already") as caught:
        ledger.add_schedule(_nightly(cron="0 23 * * *"))
    assert isinstance(caught.value, ConflictError) and isinstance(caught.value, LedgerError)
    paused = ledger.set_paused("nightly", True)
    assert isinstance(paused, ScheduleRecord)
    assert paused.schedule.paused and paused.updated_at > added.updated_at
    resumed = ledger.set_paused("nightly", False)
    assert isinstance(resumed, ScheduleRecord) and resumed.schedule.paused is False
    ledger.remove_schedule("a-first")
    assert [r.name for r in ledger.schedules()] == ["nightly"]
    for change in (
        lambda: ledger.set_paused("a-first", True),
        lambda: ledger.remove_schedule("a-first"),
        lambda: ledger.mark_fired("a-first", datetime(2026, 1, 1, tzinfo=UTC)),
        lambda: ledger.inbox_taken("a-first", [], None),
    ):
        with pytest.raises(UnknownScheduleError) as unknown:
            change()
        assert isinstance(unknown.value, NotFoundError)


def test_mark_fired_never_moves_back(ledger: Ledger) -> None:
    ledger.add_schedule(_nightly())
    first = datetime(2026, 3, 29, 20, 0, tzinfo=UTC)
    later = first + timedelta(days=1)
    assert ledger.mark_fired("nightly", first).last_fired == first
    assert ledger.mark_fired("nightly", later).last_fired == later
    assert ledger.mark_fired("nightly", first).last_fired == later
    record = ledger.schedule("nightly")
    assert record is not None and record.last_fired == later
    # the same instant given in another zone is the same window
    berlin = later.astimezone(timezone(timedelta(hours=2)))
    assert ledger.mark_fired("nightly", berlin).last_fired == later
    with pytest.raises(LedgerInputError, match="no time zone"):
        ledger.mark_fired("nightly", datetime(2026, 4, 1))


def test_threads_adding_one_name_at_once_add_it_once(ledger: Ledger) -> None:
    def add() -> str:
        try:
            ledger.add_schedule(_nightly())
            return "added"
        except DuplicateScheduleError:
            return "refused"

    assert sorted(_in_threads(4, add)) == ["added", "refused", "refused", "refused"]


def test_the_inbox_record_drives_take_across_runs(ledger: Ledger) -> None:
    ledger.add_schedule(_nightly())
    now = datetime(2026, 3, 29, 20, 0, tzinfo=UTC)
    old = int((now - timedelta(hours=1)).timestamp()) * 1_000_000_000
    big = 5 * 2**32  # sizes and mtimes past 32 bits
    a, b = InboxFile("/lab/inbox/a.svs", big, old), InboxFile("/lab/inbox/b.svs", 10, old)

    first = take([a, b], ledger.inbox_seen("nightly"), now, 30, 2)
    assert first.take == (a, b)
    taken = ledger.inbox_taken("nightly", first.take, "1" * 32)
    assert [(r.state, r.attempts, r.batch_id) for r in taken] == [
        (InboxState.TAKEN, 1, "1" * 32)
    ] * 2
    assert take([a, b], ledger.inbox_seen("nightly"), now, 30, 2).take == ()  # in flight
    ledger.inbox_result("nightly", a.path, a.size, a.mtime_ns, InboxState.DONE)
    failed = ledger.inbox_result("nightly", *b.key, InboxState.FAILED, "unreadable")
    assert failed.state is InboxState.FAILED and failed.last_error == "unreadable"

    second = take([a, b], ledger.inbox_seen("nightly"), now, 30, 2)
    assert second.take == (b,) and second.retry == (b,)
    ledger.inbox_taken("nightly", second.take, "2" * 32)
    ledger.inbox_result("nightly", *b.key, InboxState.FAILED, "unreadable again")

    third = take([a, b], ledger.inbox_seen("nightly"), now, 30, 2)
    assert third.take == () and [h.reason for h in third.hold] == ["unreadable again"]
    for held in third.hold:
        ledger.inbox_result("nightly", *held.file.key, InboxState.HELD, held.reason)
    seen = {r.path: r for r in ledger.inbox_seen("nightly")}
    assert (seen[a.path].state, seen[a.path].attempts, seen[a.path].size) == ("done", 1, big)
    assert (seen[b.path].state, seen[b.path].attempts, seen[b.path].batch_id) == (
        "held",
        2,
        "2" * 32,
    )
    assert seen[b.path].last_error == "unreadable again"

    # a moved: its row follows it, and it is not taken again
    moved_a = InboxFile("/lab/inbox/sub/a.svs", a.size, a.mtime_ns)
    fourth = take([moved_a, b], ledger.inbox_seen("nightly"), now, 30, 2)
    assert fourth.take == () and [m.new for m in fourth.moved] == [moved_a]
    for m in fourth.moved:
        ledger.inbox_moved("nightly", m.old, m.new)
    assert {r.path for r in ledger.inbox_seen("nightly")} == {moved_a.path, b.path}
    assert take([moved_a, b], ledger.inbox_seen("nightly"), now, 30, 2).moved == ()

    with pytest.raises(UnknownInboxFileError):
        ledger.inbox_result("nightly", "/lab/inbox/never.svs", 1, 1, InboxState.DONE)
    with pytest.raises(LedgerInputError):
        ledger.inbox_result("nightly", *b.key, InboxState.TAKEN)
    ledger.remove_schedule("nightly")
    assert ledger.inbox_seen("nightly") == []
