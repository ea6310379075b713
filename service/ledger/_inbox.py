"""The ledger's inbox files: what each schedule has seen in its inbox and taken into a batch,
and what became of it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from slidemill.service.ledger._core import LedgerCore
from slidemill.service.ledger._errors import LedgerInputError, UnknownInboxFileError
from slidemill.service.ledger._models import BatchRow, InboxFileRow
from slidemill.service.ledger._records import InboxRecord
from slidemill.service.ledger._schedules import _schedule_locked
from slidemill.service.schedules import InboxFile, InboxState


class InboxLedger(LedgerCore):
    """The schedules' inbox files (a part of `Ledger`); each write locks its schedule's row."""

    def inbox_seen(self, name: str) -> list[InboxRecord]:
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
    ) -> list[InboxRecord]:
        """`files` go to batch `batch_id`: each is `taken` and one attempt more (a new one is
        added at its first). A hash a file carries is kept."""
        with self._session(write=True) as session:
            _schedule_locked(session, name)  # one writer per schedule
            now = self._now()
            out = []
            for f in files:
                row = _inbox_row(session, name, f.path, f.size, f.mtime_ns)
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
            _schedule_locked(session, name)
            row = _inbox_row(session, name, path, size, mtime_ns)
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
            _schedule_locked(session, name)
            row = _inbox_row(session, name, *old)
            if row is None:
                raise UnknownInboxFileError(f"schedule {name} has not seen {old[0]}")
            row.path, row.size, row.mtime_ns = new.path, new.size, new.mtime_ns
            row.sha256 = new.sha256 or row.sha256
            row.updated_at = self._now()
            session.flush()
            return _inbox_record(row)


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
