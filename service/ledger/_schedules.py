"""The ledger's schedules: kept, listed, paused, removed; when each last fired and why its
last run failed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slidemill.service.ledger._core import LedgerCore, _aware
from slidemill.service.ledger._errors import DuplicateScheduleError, UnknownScheduleError
from slidemill.service.ledger._models import InboxFileRow, ScheduleRow
from slidemill.service.ledger._records import BrokenScheduleRecord, ScheduleRecord
from slidemill.service.schedules import Schedule, ScheduleError


class ScheduleLedger(LedgerCore):
    """Schedules (a part of `Ledger`); removing one removes the record of its inbox files."""

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

    def schedules(self) -> list[ScheduleRecord | BrokenScheduleRecord]:
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
            row = _schedule_locked(session, name)
            if row.paused != paused:
                row.paused = paused
                row.updated_at = self._now()
            session.flush()
            return _any_schedule_record(row)

    def schedule_error(self, name: str, error: str | None) -> None:
        """Keep why the schedule's last run failed (one line), with when; None clears it after
        a run that worked (nothing is written when there is nothing to clear)."""
        with self._session(write=True) as session:
            row = _schedule_locked(session, name)
            if error is None and row.last_error is None:
                return
            now = self._now()
            row.last_error = error
            row.last_error_at = None if error is None else now
            row.updated_at = now

    def remove_schedule(self, name: str) -> None:
        """Remove the schedule and the record of its inbox files; its batches stay."""
        with self._session(write=True) as session:
            row = _schedule_locked(session, name)
            session.execute(delete(InboxFileRow).where(InboxFileRow.schedule == name))
            session.delete(row)

    def mark_fired(self, name: str, window: datetime) -> ScheduleRecord:
        """Record `window` as fired (or passed over): `last_fired` becomes it, unless it is
        later already (a window fired twice, or out of order, never moves it back)."""
        window = _aware(window, "window")
        with self._session(write=True) as session:
            row = _schedule_locked(session, name)
            if row.last_fired is None or window > row.last_fired:
                row.last_fired = window
                row.updated_at = self._now()
            session.flush()
            return _schedule_record(row)


def _schedule_locked(session: Session, name: str) -> ScheduleRow:
    row = session.get(ScheduleRow, name, with_for_update=True)
    if row is None:
        raise UnknownScheduleError(f"no schedule named {name} in the ledger")
    return row


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
