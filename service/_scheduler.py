"""The schedules' clock: every tick, each schedule's windows due since its last one (by its
catch-up policy) become a batch of the slides new in its inbox since the last run. A schedule
that fails (its inbox gone, a bug) fails alone: its error is kept on it, the others fire."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from slidemill.pipeline.errors import one_line
from slidemill.pipeline.slides import assign_ids
from slidemill.pipeline.slides import inside as slide_inside
from slidemill.schemas import SlidemillError
from slidemill.service._contracts import BatchRequest
from slidemill.service._paths import inside_roots
from slidemill.service._runner import SCHEDULE_ORIGIN
from slidemill.service.errors import NotFoundError
from slidemill.service.ledger import BrokenScheduleRecord, Ledger, ScheduleRecord
from slidemill.service.schedules import (
    CatchUp,
    InboxState,
    InvalidScheduleError,
    Schedule,
    ScheduleFailedError,
    file_sha256,
    output_folder,
    scan,
    take,
    windows_due,
)

log = logging.getLogger(__name__)

SCHEDULE_PRIORITY = 0
"""Scheduled batches run below interactive ones (`INTERACTIVE_PRIORITY`) on a shared cluster."""


def _leads_inside(path: str, roots: Sequence[Path]) -> bool:
    """Whether `path`, links followed, lies inside `roots` (a loop of links does not)."""
    try:
        return slide_inside(Path(path).resolve(), roots)
    except (OSError, RuntimeError):
        return False


class Waker(Protocol):
    """What the scheduler needs of the runner: to be told a batch is queued."""

    def wake(self) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Fires schedules on a thread, every `tick_s`; `tick` is the whole decision, callable with
    any clock (the tests drive it)."""

    def __init__(
        self,
        ledger: Ledger,
        roots: Sequence[Path],
        runner: Waker,
        *,
        tick_s: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._ledger = ledger
        self._roots = tuple(roots)
        self._runner = runner
        self._tick_s = tick_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set[tuple[str, str]] = set()  # broken schedules logged already

    def problems(self) -> list[str]:
        """What the health check reports: the scheduler's thread stopped while serving."""
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return [f"the schedules' thread {self._thread.name} has stopped (see the log)"]
        return []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="slidemill-schedules", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug in one tick must not stop the night's schedules
                log.exception("schedules: the tick failed; the next one tries again")
            self._stop.wait(self._tick_s)

    def tick(self) -> list[str]:
        """Fire every window due now; returns the batches queued. A window is recorded as
        fired after its batch is queued, so a service killed in between fires it again, and
        finds its files already taken. Each schedule is on its own: whatever one raises is
        kept on it (`last_error`) and the next one fires all the same."""
        now = self._clock()
        queued = []
        for record in self._ledger.schedules():
            if isinstance(record, BrokenScheduleRecord):
                self._report_broken(record)
                continue
            try:
                queued += self._tick_one(record, now)
            except Exception as err:  # even a bug: this schedule's, not the night's
                self._failed(record.name, err)
        return queued

    def run_now(self, name: str) -> str | None:
        """Run the schedule once now, outside its windows (its next window is unchanged). A
        failure is kept on the schedule and raised as one of slidemill's errors, whatever it
        was: `ScheduleFailedError` for a bug (the log has its traceback)."""
        record = self._ledger.schedule(name)
        if record is None:
            raise NotFoundError(f"no schedule {name}")
        if isinstance(record, BrokenScheduleRecord):
            raise InvalidScheduleError(
                f"schedule {name} cannot run as stored: {record.reason}; remove it and add it again"
            )
        now = self._clock()
        try:
            batch = self._fire(record.schedule, now, now)
        except SlidemillError as err:
            self._failed(name, err)
            raise
        except Exception as err:
            self._failed(name, err)
            raise ScheduleFailedError(f"schedule {name} failed: {one_line(err)}") from err
        self._ledger.schedule_error(name, None)
        return batch

    def _tick_one(self, record: ScheduleRecord, now: datetime) -> list[str]:
        schedule = record.schedule
        since = (record.last_fired, record.created_at, now)
        queued = []
        for window in windows_due(schedule, *since):
            if not schedule.paused:  # a paused schedule lets its windows pass
                batch = self._fire_recorded(schedule, window, now)
                if batch is not None:
                    queued.append(batch)
            # a window that failed passes too: its error is on the schedule, and firing it
            # again at every tick would only repeat it (run-now is there once it is fixed)
            self._ledger.mark_fired(schedule.name, window)
        # windows its catch-up policy passed over (`skip`) are recorded as passed too
        newest = windows_due(replace(schedule, catch_up=CatchUp.LATEST), *since)
        if newest:
            self._ledger.mark_fired(schedule.name, newest[-1])
        return queued

    def _fire_recorded(self, schedule: Schedule, window: datetime, now: datetime) -> str | None:
        """`_fire`, its outcome kept on the schedule: an error with its time, or none."""
        try:
            batch = self._fire(schedule, window, now)
        except Exception as err:  # this window fails alone, with its reason
            self._failed(schedule.name, err, window)
            return None
        self._ledger.schedule_error(schedule.name, None)
        return batch

    def _failed(self, name: str, err: Exception, window: datetime | None = None) -> None:
        """Log the schedule's failure (a bug with its traceback) and keep it on the schedule."""
        line = one_line(err)
        at = f", window {window.isoformat()}" if window is not None else ""
        if isinstance(err, SlidemillError):
            log.error("schedule %s%s: %s", name, at, line)
        else:
            log.exception("schedule %s%s failed", name, at)
        try:
            self._ledger.schedule_error(name, line)
        except SlidemillError as unkept:  # the ledger away, or the schedule removed meanwhile
            log.error("schedule %s: its error was not kept: %s", name, one_line(unkept))

    def _report_broken(self, record: BrokenScheduleRecord) -> None:
        """A stored schedule that no longer loads fires nothing: said once per service life."""
        if (record.name, record.reason) not in self._reported:
            self._reported.add((record.name, record.reason))
            log.error("schedule %s is skipped, it cannot be loaded: %s; remove it and add it "
                      "again", record.name, record.reason)  # fmt: skip

    def _fire(self, schedule: Schedule, window: datetime, now: datetime) -> str | None:
        name = schedule.name
        inbox = inside_roots(schedule.inbox, self._roots, "inbox")
        listed = scan(inbox)
        # a link in the inbox that leads out of the roots is neither hashed nor taken
        inside = [f for f in listed if _leads_inside(f.path, self._roots)]
        if len(inside) < len(listed):
            log.warning("schedule %s: %d inbox file(s) lead outside the allowed roots; "
                        "left alone", name, len(listed) - len(inside))  # fmt: skip
        decision = take(
            inside,
            self._ledger.inbox_seen(name),
            now,
            schedule.settle_s,
            schedule.max_attempts,
            digest=file_sha256,
        )
        for moved in decision.moved:
            self._ledger.inbox_moved(name, moved.old, moved.new)
        for held in decision.hold:
            f = held.file
            self._ledger.inbox_result(
                name, f.path, f.size, f.mtime_ns, InboxState.HELD, held.reason
            )
        if decision.settling:
            log.info("schedule %s: %d file(s) still being written, left for the next run",
                     name, len(decision.settling))  # fmt: skip
        files = decision.take
        if not files:
            log.info("schedule %s, window %s: nothing new in %s", name, window, inbox)
            return None
        out = inside_roots(output_folder(schedule, window), self._roots, "output folder")
        model = inside_roots(schedule.model, self._roots, "model")
        paths = [inside_roots(f.path, self._roots, "slide") for f in files]
        request = BatchRequest.model_validate(
            {**schedule.options, "slides": [str(p) for p in paths], "model": str(model),
             "out": str(out)}
        )  # fmt: skip
        record = self._ledger.create_batch(
            request=request.model_dump(mode="json"),
            out=str(out),
            slides=[(e.slide_id, str(e.path)) for e in assign_ids(paths)],
            origin=f"{SCHEDULE_ORIGIN}{name}",
            priority=SCHEDULE_PRIORITY,
        )
        self._ledger.inbox_taken(name, files, record.id)
        self._runner.wake()
        log.info("schedule %s, window %s: batch %s of %d slide(s)", name, window, record.id,
                 len(files))  # fmt: skip
        return record.id
