"""The ledger's batches and their slides: queued, claimed by one runner at a time, finished,
cancelled or retried; each slide's result and the batch's counts."""

from __future__ import annotations

import builtins
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from slidemill.service.ledger._core import LedgerCore, _aware
from slidemill.service.ledger._errors import (
    InvalidTransitionError,
    LedgerInputError,
    NotRetryableError,
    UnknownBatchError,
    UnknownSlideError,
)
from slidemill.service.ledger._inbox import _release_inbox
from slidemill.service.ledger._models import BatchRow, SlideRow
from slidemill.service.ledger._records import BatchRecord, BatchStatus, SlideRecord, SlideState

_CLAIM_LOCK = 0x51D3_C1A1
"""PostgreSQL advisory lock key held while claiming, so that two claimers never both find an
output folder free (SQLite's write lock serialises them already)."""


class BatchLedger(LedgerCore):
    """Batches and their slides (a part of `Ledger`)."""

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
                    row = _locked(session, candidate)  # not loaded before: fresh
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
            row = _locked(session, batch_id)
            if BatchStatus(row.status).final:
                raise InvalidTransitionError(
                    f"batch {batch_id} has already finished ({row.status})"
                )
            now = self._now()
            row.status = status.value
            row.error = error
            row.finished_at = now
            row.updated_at = now
            _release_inbox(session, row, now)

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
                    _release_inbox(session, row, now)
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
                _release_inbox(session, row, now)
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
            batch = _locked(session, batch_id)  # one writer per batch: exact counts
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


def _locked(session: Session, batch_id: str) -> BatchRow:
    """The batch's row, locked until the transaction ends (PostgreSQL `FOR UPDATE`; SQLite
    has the whole database's write lock already)."""
    row = session.get(BatchRow, batch_id, with_for_update=True)
    if row is None:
        raise UnknownBatchError(f"no batch {batch_id} in the ledger")
    return row


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
