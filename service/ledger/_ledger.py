"""The job ledger: batches and their slides, schedules and their inbox files, in a database,
each method one short transaction of its own, so the service's threads (and processes) share
one `Ledger` without a lock."""

from __future__ import annotations

import builtins
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from uuid import uuid4

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased

from slidemill.service.ledger._database import WRITE, create, migrate, parse_url, unavailable
from slidemill.service.ledger._errors import (
    DuplicateScheduleError,
    InvalidTransitionError,
    LedgerInputError,
    NotRetryableError,
    UnknownBatchError,
    UnknownInboxFileError,
    UnknownScheduleError,
    UnknownSlideError,
)
from slidemill.service.ledger._models import (
    BatchRow,
    InboxFileRow,
    LeaseRow,
    ScheduleRow,
    SlideRow,
)
from slidemill.service.ledger._records import (
    BatchRecord,
    BatchStatus,
    BrokenScheduleRecord,
    InboxRecord,
    LeaseRecord,
    ScheduleRecord,
    SlideRecord,
    SlideState,
)
from slidemill.service.schedules import InboxFile, InboxState, Schedule, ScheduleError

_CLAIM_LOCK = 0x51D3_C1A1
"""PostgreSQL advisory lock key held while claiming, so that two claimers never both find an
output folder free (SQLite's write lock serialises them already)."""
_LEASE = "service"
"""The lease row's name: one service per ledger."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """Batches and their slides, kept in SQLite (a file) or PostgreSQL.

    Open it with `Ledger.open(url)`; every method opens, commits and closes its own session,
    so one instance serves many threads. What comes back are frozen records, never ORM
    objects. Datetimes, given and returned, are timezone-aware UTC.
    """

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = _utcnow) -> None:
        """Use `Ledger.open`; this takes an engine whose schema is already at head."""
        self._engine = engine
        self._clock = clock

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> Ledger:
        """The ledger at `url` (`sqlite:///FILE` or `postgresql+psycopg://…`), its schema
        brought to the newest migration first. `clock` gives "now" (aware); tests drive it."""
        engine = create(parse_url(url))
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock or _utcnow)

    @property
    def url(self) -> str:
        """The database's URL, its password masked: for messages."""
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close the pooled connections; the ledger cannot be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- batches ---------------------------------------------------------------------------

    def create_batch(
        self,
        *,
        request: Mapping[str, Any],
        out: str,
        slides: Sequence[tuple[str, str]],
        origin: str = "api",
        priority: int = 0,
    ) -> BatchRecord:
        """Queue a batch of `slides` ((slide id, path) pairs, ids unique) writing to `out`;
        `request` is the JSON it was submitted with. Each slide starts `pending`."""
        with self._session(write=True) as session:
            row = self._insert_batch(
                session, request=request, out=out, slides=slides, origin=origin, priority=priority
            )
            return _batch_record(row)

    def get(self, batch_id: str) -> BatchRecord | None:
        """The batch, or None when the ledger has no such id."""
        with self._session() as session:
            row = session.get(BatchRow, batch_id)
            return None if row is None else _batch_record(row)

    def slides(self, batch_id: str) -> builtins.list[SlideRecord]:
        """The batch's slides in submission order; empty for an unknown id."""
        with self._session() as session:
            rows = session.scalars(
                select(SlideRow).where(SlideRow.batch_id == batch_id).order_by(SlideRow.position)
            )
            return [_slide_record(r) for r in rows]

    def list(
        self,
        *,
        status: BatchStatus | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        updated_since: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[BatchRecord]:
        """Batches, newest first: of one `status`; created at or after `since` and before
        `until`; changed at or after `updated_since` (a poller passes the newest `updated_at`
        it has seen, and may see that batch again); at most `limit`."""
        if limit < 1:
            raise LedgerInputError(f"limit {limit}: list at least one batch")
        query = select(BatchRow)
        if status is not None:
            query = query.where(BatchRow.status == BatchStatus(status).value)
        if since is not None:
            query = query.where(BatchRow.created_at >= _aware(since, "since"))
        if until is not None:
            query = query.where(BatchRow.created_at < _aware(until, "until"))
        if updated_since is not None:
            query = query.where(BatchRow.updated_at >= _aware(updated_since, "updated_since"))
        query = query.order_by(BatchRow.created_at.desc(), BatchRow.id.desc()).limit(limit)
        with self._session() as session:
            return [_batch_record(r) for r in session.scalars(query)]

    def claim_next(self) -> BatchRecord | None:
        """Take the queued batch of the highest priority, the oldest among equals, and mark it
        `running`; None when nothing is queued. A batch whose output folder is a running
        batch's waits (the folder holds one run at a time), and the next one that can run is
        taken. Two threads or processes never take the same batch: the update only succeeds
        while the batch is still queued."""
        running = aliased(BatchRow)
        busy = select(running.out).where(running.status == BatchStatus.RUNNING.value)
        with self._session(write=True) as session:
            if self._engine.dialect.name == "postgresql":
                session.execute(select(func.pg_advisory_xact_lock(_CLAIM_LOCK)))
            while True:
                candidate = session.scalar(
                    select(BatchRow.id)
                    .where(BatchRow.status == BatchStatus.QUEUED.value, BatchRow.out.not_in(busy))
                    .order_by(BatchRow.priority.desc(), BatchRow.created_at, BatchRow.id)
                    .limit(1)
                )
                if candidate is None:
                    return None
                now = self._now()
                claimed = session.connection().execute(
                    update(BatchRow)
                    .where(BatchRow.id == candidate, BatchRow.status == BatchStatus.QUEUED.value)
                    .values(status=BatchStatus.RUNNING.value, updated_at=now)
                )
                if claimed.rowcount == 1:
                    row = self._locked(session, candidate)  # not loaded before: fresh
                    if row.started_at is None:  # a resumed batch keeps its first start
                        row.started_at = now
                    session.flush()
                    return _batch_record(row)
                # another claimer took it between the select and the update: look again

    def finish(self, batch_id: str, status: BatchStatus, error: str | None = None) -> None:
        """End the batch as `status` (done, stopped or cancelled), with `error` as the reason
        it stopped; `finished_at` is now."""
        status = BatchStatus(status)
        if not status.final:
            raise InvalidTransitionError(
                f"batch {batch_id}: a batch finishes as done, stopped or cancelled, not {status}"
            )
        with self._session(write=True) as session:
            row = self._locked(session, batch_id)
            if BatchStatus(row.status).final:
                raise InvalidTransitionError(
                    f"batch {batch_id} has already finished ({row.status})"
                )
            now = self._now()
            row.status = status.value
            row.error = error
            row.finished_at = now
            row.updated_at = now
            self._release_inbox(session, row, now)

    def requeue_interrupted(self) -> builtins.list[str]:
        """At the service's start: every batch still `running` was interrupted by the last
        service's end, and goes back to `queued` to be resumed; one whose cancel was requested
        is cancelled instead. Returns the ids queued again, oldest first. Call it only when no
        other service shares this ledger."""
        with self._session(write=True) as session:
            rows = session.scalars(
                select(BatchRow)
                .where(BatchRow.status == BatchStatus.RUNNING.value)
                .order_by(BatchRow.created_at, BatchRow.id)
                .with_for_update()
            ).all()
            now = self._now()
            again = []
            for row in rows:
                row.updated_at = now
                if row.cancel_requested:
                    row.status = BatchStatus.CANCELLED.value
                    row.finished_at = now
                    row.error = "cancelled while the service was stopped"
                    self._release_inbox(session, row, now)
                else:
                    row.status = BatchStatus.QUEUED.value
                    again.append(row.id)
            return again

    def request_cancel(self, batch_id: str) -> BatchRecord | None:
        """Cancel the batch: a queued one is cancelled at once; a running one is marked, and
        its runner, which asks `cancel_requested`, stops it; a finished one stays as it is.
        Returns the batch as it now stands, or None for an unknown id."""
        with self._session(write=True) as session:
            row = session.get(BatchRow, batch_id, with_for_update=True)
            if row is None:
                return None
            now = self._now()
            if row.status == BatchStatus.QUEUED.value:
                row.status = BatchStatus.CANCELLED.value
                row.error = "cancelled before it started"
                row.finished_at = now
                row.updated_at = now
                self._release_inbox(session, row, now)
            elif row.status == BatchStatus.RUNNING.value and not row.cancel_requested:
                row.cancel_requested = True
                row.updated_at = now
            session.flush()
            return _batch_record(row)

    def cancel_requested(self, batch_id: str) -> bool:
        """Whether someone asked to cancel the batch (False for an unknown id)."""
        with self._session() as session:
            flag = session.scalar(select(BatchRow.cancel_requested).where(BatchRow.id == batch_id))
            return bool(flag)

    def retry_failed(self, batch_id: str) -> BatchRecord | None:
        """Queue a new batch of the failed slides of a finished one: the same request, output
        folder and priority, origin `retry:<batch id>`. None for an unknown id; a batch not
        finished yet or without failed slides raises `NotRetryableError`."""
        with self._session(write=True) as session:
            old = session.get(BatchRow, batch_id, with_for_update=True)
            if old is None:
                return None
            if not BatchStatus(old.status).final:
                raise NotRetryableError(
                    f"batch {batch_id} is {old.status}: retry its failed slides once it finishes"
                )
            failed = session.scalars(
                select(SlideRow)
                .where(SlideRow.batch_id == batch_id, SlideRow.state == SlideState.FAILED.value)
                .order_by(SlideRow.position)
            ).all()
            if not failed:
                raise NotRetryableError(f"batch {batch_id} has no failed slides to retry")
            row = self._insert_batch(
                session,
                request=old.request,
                out=old.out,
                slides=[(s.slide_id, s.path) for s in failed],
                origin=f"retry:{batch_id}",
                priority=old.priority,
            )
            return _batch_record(row)

    # -- slides ----------------------------------------------------------------------------

    def record_slide(
        self,
        batch_id: str,
        *,
        slide_id: str,
        state: SlideState,
        label: str | None = None,
        class_names: Sequence[str] = (),
        probabilities: Sequence[float] = (),
        n_tiles: int = 0,
        error: str | None = None,
        timings: Mapping[str, float] | None = None,
        output: str | None = None,
        flags: Sequence[str] = (),
    ) -> None:
        """Write one slide's result and the batch's counts, in one transaction. The counts are
        taken from the slide rows, so writing the same slide again never counts it twice."""
        state = SlideState(state)
        probs = [float(p) for p in probabilities]
        names = [str(n) for n in class_names]
        if probs and names and len(probs) != len(names):
            raise LedgerInputError(
                f"slide {slide_id}: {len(probs)} probabilities for {len(names)} class names"
            )
        if not all(math.isfinite(p) for p in probs):
            raise LedgerInputError(f"slide {slide_id}: probabilities {probs} are not all finite")
        times = {str(k): float(v) for k, v in (timings or {}).items()}
        with self._session(write=True) as session:
            batch = self._locked(session, batch_id)  # one writer per batch: exact counts
            slide = session.get(SlideRow, (batch_id, slide_id))
            if slide is None:
                raise UnknownSlideError(f"batch {batch_id} has no slide {slide_id!r}")
            now = self._now()
            slide.state = state.value
            slide.label = label
            slide.class_names = names
            slide.probabilities = probs
            slide.n_tiles = n_tiles
            slide.error = error
            slide.timings = times
            slide.output = output
            slide.flags = [str(f) for f in flags]
            slide.updated_at = now
            session.flush()
            per_state = session.execute(
                select(SlideRow.state, func.count())
                .where(SlideRow.batch_id == batch_id)
                .group_by(SlideRow.state)
            )
            counts = Counter({slide_state: n for slide_state, n in per_state})
            batch.n_done = counts[SlideState.DONE.value]
            batch.n_failed = counts[SlideState.FAILED.value]
            batch.n_skipped = counts[SlideState.SKIPPED.value]
            batch.updated_at = now

    # -- schedules -------------------------------------------------------------------------

    def add_schedule(self, schedule: Schedule) -> ScheduleRecord:
        """Keep a new schedule; its first window is after now. A name taken already raises
        `DuplicateScheduleError`."""
        now = self._now()
        row = ScheduleRow(
            name=schedule.name,
            cron=schedule.cron,
            tz=schedule.tz,
            catch_up=schedule.catch_up.value,
            inbox=schedule.inbox,
            model=schedule.model,
            out_template=schedule.out_template,
            options=dict(schedule.options),
            paused=schedule.paused,
            max_attempts=schedule.max_attempts,
            settle_s=schedule.settle_s,
            created_at=now,
            updated_at=now,
            last_fired=None,
            last_error=None,
            last_error_at=None,
        )
        try:
            with self._session(write=True) as session:
                if session.get(ScheduleRow, schedule.name) is not None:
                    raise DuplicateScheduleError(
                        f"a schedule named {schedule.name} exists already; remove it first "
                        "or choose another name"
                    )
                session.add(row)
                session.flush()
                return _schedule_record(row)
        except IntegrityError as err:  # added by another process between the get and the insert
            raise DuplicateScheduleError(
                f"a schedule named {schedule.name} exists already; remove it first or choose "
                "another name"
            ) from err

    def schedules(self) -> builtins.list[ScheduleRecord | BrokenScheduleRecord]:
        """Every schedule, by name; one stored that no longer loads is a `BrokenScheduleRecord`
        with its reason, so that it breaks neither a listing nor the others' runs."""
        with self._session() as session:
            rows = session.scalars(select(ScheduleRow).order_by(ScheduleRow.name))
            return [_any_schedule_record(r) for r in rows]

    def schedule(self, name: str) -> ScheduleRecord | BrokenScheduleRecord | None:
        """The schedule, or None when the ledger has no such name."""
        with self._session() as session:
            row = session.get(ScheduleRow, name)
            return None if row is None else _any_schedule_record(row)

    def set_paused(self, name: str, paused: bool) -> ScheduleRecord | BrokenScheduleRecord:
        """Pause or resume the schedule; returns it as it now stands."""
        with self._session(write=True) as session:
            row = self._schedule_locked(session, name)
            if row.paused != paused:
                row.paused = paused
                row.updated_at = self._now()
            session.flush()
            return _any_schedule_record(row)

    def schedule_error(self, name: str, error: str | None) -> None:
        """Keep why the schedule's last run failed (one line), with when; None clears it after
        a run that worked (nothing is written when there is nothing to clear)."""
        with self._session(write=True) as session:
            row = self._schedule_locked(session, name)
            if error is None and row.last_error is None:
                return
            now = self._now()
            row.last_error = error
            row.last_error_at = None if error is None else now
            row.updated_at = now

    def remove_schedule(self, name: str) -> None:
        """Remove the schedule and the record of its inbox files; its batches stay."""
        with self._session(write=True) as session:
            row = self._schedule_locked(session, name)
            session.execute(delete(InboxFileRow).where(InboxFileRow.schedule == name))
            session.delete(row)

    def mark_fired(self, name: str, window: datetime) -> ScheduleRecord:
        """Record `window` as fired (or passed over): `last_fired` becomes it, unless it is
        later already (a window fired twice, or out of order, never moves it back)."""
        window = _aware(window, "window")
        with self._session(write=True) as session:
            row = self._schedule_locked(session, name)
            if row.last_fired is None or window > row.last_fired:
                row.last_fired = window
                row.updated_at = self._now()
            session.flush()
            return _schedule_record(row)

    # -- inbox files -----------------------------------------------------------------------

    def inbox_seen(self, name: str) -> builtins.list[InboxRecord]:
        """The inbox files the schedule has taken, in the order first seen; empty for an
        unknown schedule."""
        with self._session() as session:
            rows = session.scalars(
                select(InboxFileRow)
                .where(InboxFileRow.schedule == name)
                .order_by(InboxFileRow.first_seen, InboxFileRow.id)
            )
            return [_inbox_record(r) for r in rows]

    def inbox_taken(
        self, name: str, files: Sequence[InboxFile], batch_id: str | None
    ) -> builtins.list[InboxRecord]:
        """`files` go to batch `batch_id`: each is `taken` and one attempt more (a new one is
        added at its first). A hash a file carries is kept."""
        with self._session(write=True) as session:
            self._schedule_locked(session, name)  # one writer per schedule
            now = self._now()
            out = []
            for f in files:
                row = self._inbox_row(session, name, f.path, f.size, f.mtime_ns)
                if row is None:
                    row = InboxFileRow(
                        schedule=name,
                        path=f.path,
                        size=f.size,
                        mtime_ns=f.mtime_ns,
                        sha256=f.sha256,
                        state=InboxState.TAKEN.value,
                        attempts=1,
                        last_error=None,
                        batch_id=batch_id,
                        first_seen=now,
                        updated_at=now,
                    )
                    session.add(row)
                else:
                    row.state = InboxState.TAKEN.value
                    row.attempts += 1
                    row.batch_id = batch_id
                    row.sha256 = f.sha256 or row.sha256
                    row.updated_at = now
                session.flush()
                out.append(_inbox_record(row))
            return out

    def inbox_result(
        self,
        name: str,
        path: str,
        size: int,
        mtime_ns: int,
        state: InboxState,
        error: str | None = None,
    ) -> InboxRecord:
        """What became of a taken file: `done`, `failed` (with `error`) or `held` (with its
        reason). An unknown file raises `UnknownInboxFileError`."""
        state = InboxState(state)
        if state is InboxState.TAKEN:
            raise LedgerInputError(f"inbox file {path}: a result is done, failed or held")
        with self._session(write=True) as session:
            self._schedule_locked(session, name)
            row = self._inbox_row(session, name, path, size, mtime_ns)
            if row is None:
                raise UnknownInboxFileError(
                    f"schedule {name} has not taken {path} ({size} bytes, mtime {mtime_ns} ns)"
                )
            row.state = state.value
            row.last_error = error if state is not InboxState.DONE else None
            row.updated_at = self._now()
            session.flush()
            return _inbox_record(row)

    def inbox_moved(self, name: str, old: tuple[str, int, int], new: InboxFile) -> InboxRecord:
        """A seen file found at a new path (`take`'s `Moved`): its row follows it, keeping its
        state and attempts."""
        with self._session(write=True) as session:
            self._schedule_locked(session, name)
            row = self._inbox_row(session, name, *old)
            if row is None:
                raise UnknownInboxFileError(f"schedule {name} has not seen {old[0]}")
            row.path, row.size, row.mtime_ns = new.path, new.size, new.mtime_ns
            row.sha256 = new.sha256 or row.sha256
            row.updated_at = self._now()
            session.flush()
            return _inbox_record(row)

    # -- the service's lease ---------------------------------------------------------------

    def lease(self) -> LeaseRecord | None:
        """Who holds the ledger's one-service lease, or None when nobody does."""
        with self._session() as session:
            row = session.get(LeaseRow, _LEASE)
            return None if row is None else _lease_record(row)

    def take_lease(
        self,
        *,
        host: str,
        pid: int,
        process_started: float,
        token: str,
        replacing: str | None = None,
    ) -> bool:
        """Take the lease for the process (`host`, `pid`, `process_started`) under `token`:
        when nobody holds it, or, to take over a holder judged dead, when the holder is still
        the one whose token is `replacing`. False when another holds it (or took it first)."""
        now = self._now()
        try:
            with self._session(write=True) as session:
                row = session.get(LeaseRow, _LEASE, with_for_update=True)
                if row is None:
                    session.add(
                        LeaseRow(
                            name=_LEASE,
                            host=host,
                            pid=pid,
                            process_started=process_started,
                            token=token,
                            acquired_at=now,
                            heartbeat_at=now,
                        )
                    )
                    session.flush()
                    return True
                if replacing is None or row.token != replacing:
                    return False
                row.host, row.pid, row.process_started = host, pid, process_started
                row.token, row.acquired_at, row.heartbeat_at = token, now, now
                return True
        except IntegrityError:  # another service added it between the get and the insert
            return False

    def renew_lease(self, token: str) -> bool:
        """The holder's heartbeat: the lease's time becomes now. False when `token` no longer
        holds it (it was taken over, or released)."""
        with self._session(write=True) as session:
            renewed = session.connection().execute(
                update(LeaseRow)
                .where(LeaseRow.name == _LEASE, LeaseRow.token == token)
                .values(heartbeat_at=self._now())
            )
            return renewed.rowcount == 1

    def release_lease(self, token: str) -> bool:
        """Give the lease up; False (and nothing done) when `token` does not hold it."""
        with self._session(write=True) as session:
            released = session.connection().execute(
                delete(LeaseRow).where(LeaseRow.name == _LEASE, LeaseRow.token == token)
            )
            return released.rowcount == 1

    # -- inside ----------------------------------------------------------------------------

    def _now(self) -> datetime:
        return _aware(self._clock(), "the ledger's clock")

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises. A
        writing one takes SQLite's write lock at its start (`BEGIN IMMEDIATE`)."""
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                if write:
                    session.connection(execution_options={WRITE: True})
                yield session
        except OperationalError as err:
            raise unavailable(self._engine.url, err) from err

    @staticmethod
    def _locked(session: Session, batch_id: str) -> BatchRow:
        """The batch's row, locked until the transaction ends (PostgreSQL `FOR UPDATE`; SQLite
        has the whole database's write lock already)."""
        row = session.get(BatchRow, batch_id, with_for_update=True)
        if row is None:
            raise UnknownBatchError(f"no batch {batch_id} in the ledger")
        return row

    @staticmethod
    def _schedule_locked(session: Session, name: str) -> ScheduleRow:
        row = session.get(ScheduleRow, name, with_for_update=True)
        if row is None:
            raise UnknownScheduleError(f"no schedule named {name} in the ledger")
        return row

    @staticmethod
    def _inbox_row(
        session: Session, name: str, path: str, size: int, mtime_ns: int
    ) -> InboxFileRow | None:
        return session.scalar(
            select(InboxFileRow).where(
                InboxFileRow.schedule == name,
                InboxFileRow.path == path,
                InboxFileRow.size == size,
                InboxFileRow.mtime_ns == mtime_ns,
            )
        )

    @staticmethod
    def _release_inbox(session: Session, batch: BatchRow, now: datetime) -> None:
        """The batch ended: an inbox file it took and has no result for goes back to its inbox
        as failed, with the batch's reason, to be taken again under its schedule's attempt
        limit (else it would stay `taken`, never tried again)."""
        reason = batch.error or f"its batch {batch.id} ended {batch.status} without its result"
        session.execute(
            update(InboxFileRow)
            .where(
                InboxFileRow.batch_id == batch.id,
                InboxFileRow.state == InboxState.TAKEN.value,
            )
            .values(state=InboxState.FAILED.value, last_error=reason, updated_at=now)
        )

    def _insert_batch(
        self,
        session: Session,
        *,
        request: Mapping[str, Any],
        out: str,
        slides: Sequence[tuple[str, str]],
        origin: str,
        priority: int,
    ) -> BatchRow:
        seen: set[str] = set()
        for slide_id, _ in slides:
            if slide_id in seen:
                raise LedgerInputError(f"slide id {slide_id!r} is twice in the batch")
            seen.add(slide_id)
        try:  # a copy, and a clear message now rather than the database's later
            document = json.loads(json.dumps(dict(request), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise LedgerInputError(f"the batch's request is not JSON: {err}") from err
        now = self._now()
        row = BatchRow(
            id=uuid4().hex,
            origin=origin,
            status=BatchStatus.QUEUED.value,
            priority=priority,
            out=out,
            request=document,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            error=None,
            cancel_requested=False,
            n_slides=len(slides),
            n_done=0,
            n_failed=0,
            n_skipped=0,
        )
        session.add(row)
        session.flush()  # the batch before its slides (their foreign key)
        session.add_all(
            SlideRow(
                batch_id=row.id,
                slide_id=slide_id,
                position=position,
                path=path,
                state=SlideState.PENDING.value,
                label=None,
                class_names=[],
                probabilities=[],
                n_tiles=0,
                error=None,
                timings={},
                output=None,
                flags=[],
                updated_at=now,
            )
            for position, (slide_id, path) in enumerate(slides)
        )
        session.flush()
        return row


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise LedgerInputError(
            f"{name} {value.isoformat()} has no time zone; give one (e.g. …T22:00:00Z)"
        )
    return value.astimezone(UTC)


def _batch_record(row: BatchRow) -> BatchRecord:
    return BatchRecord(
        id=row.id,
        origin=row.origin,
        status=BatchStatus(row.status),
        priority=row.priority,
        out=row.out,
        request=dict(row.request),
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        n_slides=row.n_slides,
        n_done=row.n_done,
        n_failed=row.n_failed,
        n_skipped=row.n_skipped,
        cancel_requested=row.cancel_requested,
    )


def _slide_record(row: SlideRow) -> SlideRecord:
    return SlideRecord(
        batch_id=row.batch_id,
        slide_id=row.slide_id,
        path=row.path,
        state=SlideState(row.state),
        label=row.label,
        class_names=tuple(row.class_names),
        probabilities=tuple(float(p) for p in row.probabilities),
        n_tiles=row.n_tiles,
        error=row.error,
        timings={k: float(v) for k, v in row.timings.items()},
        output=row.output,
        flags=tuple(row.flags),
        updated_at=row.updated_at,
    )


def _any_schedule_record(row: ScheduleRow) -> ScheduleRecord | BrokenScheduleRecord:
    """The row's schedule; one that no longer passes `Schedule`'s checks (stored by an older
    version) is reported with its reason instead."""
    try:
        return _schedule_record(row)
    except (ScheduleError, ValueError, TypeError) as err:
        return BrokenScheduleRecord(
            name=row.name,
            reason=str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__,
            stored=_schedule_fields(row),
            created_at=row.created_at,
            updated_at=row.updated_at,
            last_fired=row.last_fired,
            last_error=row.last_error,
            last_error_at=row.last_error_at,
        )


def _lease_record(row: LeaseRow) -> LeaseRecord:
    return LeaseRecord(
        host=row.host,
        pid=row.pid,
        process_started=row.process_started,
        token=row.token,
        acquired_at=row.acquired_at,
        heartbeat_at=row.heartbeat_at,
    )


def _schedule_fields(row: ScheduleRow) -> dict[str, Any]:
    """The row's `Schedule` fields but its name, as stored."""
    return {
        "cron": row.cron,
        "tz": row.tz,
        "inbox": row.inbox,
        "model": row.model,
        "out_template": row.out_template,
        "catch_up": row.catch_up,
        "options": dict(row.options),
        "paused": row.paused,
        "max_attempts": row.max_attempts,
        "settle_s": row.settle_s,
    }


def _schedule_record(row: ScheduleRow) -> ScheduleRecord:
    return ScheduleRecord(
        schedule=Schedule(name=row.name, **_schedule_fields(row)),
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_fired=row.last_fired,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
    )


def _inbox_record(row: InboxFileRow) -> InboxRecord:
    return InboxRecord(
        schedule=row.schedule,
        path=row.path,
        size=row.size,
        mtime_ns=row.mtime_ns,
        sha256=row.sha256,
        state=InboxState(row.state),
        attempts=row.attempts,
        last_error=row.last_error,
        batch_id=row.batch_id,
        first_seen=row.first_seen,
        updated_at=row.updated_at,
    )
