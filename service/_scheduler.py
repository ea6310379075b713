"""The schedules' clock: every tick, each schedule's windows due since its last one (by its
catch-up policy) become a batch of the slides new in its inbox since the last run."""

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
from slidemill.schemas import SlidemillError
from slidemill.service._contracts import BatchRequest
from slidemill.service._paths import inside_roots
from slidemill.service._runner import SCHEDULE_ORIGIN
from slidemill.service.errors import NotFoundError
from slidemill.service.ledger import Ledger
from slidemill.service.schedules import (
    CatchUp,
    InboxState,
    Schedule,
    file_sha256,
    output_folder,
    scan,
    take,
    windows_due,
)

log = logging.getLogger(__name__)

SCHEDULE_PRIORITY = 0
"""Scheduled batches run below interactive ones (`INTERACTIVE_PRIORITY`) on a shared cluster."""


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
        finds its files already taken."""
        now = self._clock()
        queued = []
        for record in self._ledger.schedules():
            schedule = record.schedule
            since = (record.last_fired, record.created_at, now)
            for window in windows_due(schedule, *since):
                if not schedule.paused:  # a paused schedule lets its windows pass
                    batch = self._fire_logged(schedule, window, now)
                    if batch is not None:
                        queued.append(batch)
                self._ledger.mark_fired(schedule.name, window)
            # windows its catch-up policy passed over (`skip`) are recorded as passed too
            newest = windows_due(replace(schedule, catch_up=CatchUp.LATEST), *since)
            if newest:
                self._ledger.mark_fired(schedule.name, newest[-1])
        return queued

    def run_now(self, name: str) -> str | None:
        """Run the schedule once now, outside its windows (its next window is unchanged)."""
        record = self._ledger.schedule(name)
        if record is None:
            raise NotFoundError(f"no schedule {name}")
        now = self._clock()
        return self._fire(record.schedule, now, now)

    def _fire_logged(self, schedule: Schedule, window: datetime, now: datetime) -> str | None:
        try:
            return self._fire(schedule, window, now)
        except SlidemillError as err:  # this schedule's window fails alone, with its reason
            log.error("schedule %s, window %s: %s", schedule.name, window, one_line(err))
            return None

    def _fire(self, schedule: Schedule, window: datetime, now: datetime) -> str | None:
        name = schedule.name
        inbox = inside_roots(schedule.inbox, self._roots, "inbox")
        decision = take(
            scan(inbox),
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
