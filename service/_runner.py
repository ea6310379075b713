"""The batches' runner: a few threads that take queued batches from the ledger and run each with
`run_batch` on the service's one Dask client, recording each slide as it is published."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from distributed import Client
from pydantic import ValidationError

from slidemill.cluster import connect
from slidemill.pipeline.errors import one_line
from slidemill.pipeline.graph import BatchHooks, run_batch
from slidemill.schemas import (
    AnyClusterConfig,
    InvalidInputError,
    RunSpec,
    SlidemillError,
    SlideResult,
    describe,
)
from slidemill.service.ledger import BatchRecord, BatchStatus, Ledger, SlideState
from slidemill.service.schedules import InboxState

log = logging.getLogger(__name__)

SCHEDULE_ORIGIN = "schedule:"
"""A scheduled batch's origin is this and the schedule's name."""
_IDLE_S = 1.0
"""How long an idle runner thread sleeps between looks at the ledger (a submission wakes it)."""


def run_spec(request: Mapping[str, Any], slides: list[str], cluster: AnyClusterConfig) -> RunSpec:
    """The RunSpec of a batch: its request, with the slide files it was given at submission
    (folders were listed then, so a file added later is not taken half-way), on the service's
    cluster."""
    fields = {k: v for k, v in request.items() if k != "slides"}
    try:
        return RunSpec.model_validate({**fields, "slides": slides, "cluster": cluster})
    except ValidationError as err:  # a request stored by an older version, say
        raise InvalidInputError(f"the batch's request: {describe(err)}") from err


class BatchRunner:
    """Runs queued batches, `max_running` at once, on one client held for the service's life.

    A batch interrupted by the service's death stays `running` in the ledger and is queued
    again at the next start (`Ledger.requeue_interrupted`): `run_batch` resumes it from its
    published slides and finished blocks."""

    def __init__(
        self,
        ledger: Ledger,
        cluster: AnyClusterConfig,
        max_running: int,
        allow_roots: Sequence[Path] = (),
    ) -> None:
        self._ledger = ledger
        self._roots = tuple(allow_roots)
        self._cluster = cluster
        self._max_running = max_running
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stack = ExitStack()
        self.client: Client | None = None

    def start(self) -> None:
        """Connect to the cluster, queue again what a previous service left running, start."""
        self.client = self._stack.enter_context(connect(self._cluster))
        again = self._ledger.requeue_interrupted()
        if again:
            log.warning("resuming %d batch(es) a previous service left running", len(again))
        for i in range(self._max_running):
            thread = threading.Thread(target=self._loop, name=f"slidemill-batch-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop taking batches; running ones are interrupted and stay `running` in the ledger,
        so the next start resumes them."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            for event in self._cancels.values():
                event.set()
        for thread in self._threads:
            thread.join()
        self._stack.close()

    def wake(self) -> None:
        """A batch was queued: look now rather than at the next idle tick."""
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """Stop a batch running here (the ledger already records the request)."""
        with self._lock:
            event = self._cancels.get(batch_id)
        if event is not None:
            event.set()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._cancels)

    def problems(self) -> list[str]:
        """What the health check reports: runner threads that stopped while serving."""
        if self._stopping.is_set():
            return []
        return [
            f"the batch runner thread {t.name} has stopped (see the log)"
            for t in self._threads
            if not t.is_alive()
        ]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                record = self._ledger.claim_next()
                if record is not None:
                    self._run(record)
                    self._wake.set()  # its output folder is free: a batch may wait for it
                    continue
            except Exception:  # the ledger away a while, a bug: this batch's, not the thread's
                log.exception("the batch runner failed; it goes on with the next batch")
            self._wake.wait(_IDLE_S)
            self._wake.clear()

    def _run(self, record: BatchRecord) -> None:
        cancel = threading.Event()
        with self._lock:
            self._cancels[record.id] = cancel
        try:
            if self._ledger.cancel_requested(record.id):
                cancel.set()
            status, error = self._run_batch(record, cancel)
        finally:
            with self._lock:
                self._cancels.pop(record.id, None)
        if self._stopping.is_set() and status is not BatchStatus.DONE:
            return  # left `running`: the next start resumes it
        self._ledger.finish(record.id, status, error)
        log.info("batch %s: %s%s", record.id, status, f" ({error})" if error else "")

    def _inbox_result(self, record: BatchRecord, result: SlideResult) -> None:
        """A scheduled batch's slide came from its inbox: record there whether it is done (a
        slide without tissue is done too) or failed, to be retried up to the schedule's
        limit."""
        name = record.origin.removeprefix(SCHEDULE_ORIGIN)
        state = InboxState.FAILED if result.status == "failed" else InboxState.DONE
        for seen in self._ledger.inbox_seen(name):
            if seen.batch_id == record.id and Path(seen.path).resolve() == Path(result.path):
                self._ledger.inbox_result(
                    name, seen.path, seen.size, seen.mtime_ns, state, result.error
                )

    def _run_batch(
        self, record: BatchRecord, cancel: threading.Event
    ) -> tuple[BatchStatus, str | None]:
        slides = [s.path for s in self._ledger.slides(record.id)]

        def on_result(result: SlideResult) -> None:
            if self._stopping.is_set():
                return  # the slide is not finished: the next start resumes it
            self._ledger.record_slide(
                record.id,
                slide_id=result.slide_id,
                state=SlideState(result.status),
                label=result.label,
                class_names=result.class_names,
                probabilities=result.probabilities,
                n_tiles=result.n_tiles,
                error=result.error,
                timings=result.timings.model_dump(),
                output=str(Path(record.out) / result.slide_id),
                flags=result.flag_codes,
            )
            if record.origin.startswith(SCHEDULE_ORIGIN):
                self._inbox_result(record, result)

        hooks = BatchHooks(
            client=self.client,
            on_result=on_result,
            cancel=cancel,
            priority=record.priority,
            allow_roots=self._roots,
        )
        try:
            report = run_batch(run_spec(record.request, slides, self._cluster), hooks=hooks)
        except SlidemillError as err:  # before any slide ran: a held folder, a bundle gone bad
            return BatchStatus.STOPPED, one_line(err)
        except Exception as err:  # a bug: the service goes on with its other batches
            log.exception("batch %s", record.id)
            return BatchStatus.STOPPED, f"the batch stopped: {one_line(err)}"
        if cancel.is_set() and not self._stopping.is_set():
            return BatchStatus.CANCELLED, "cancelled"
        if report.stopped:
            return BatchStatus.STOPPED, report.stopped
        return BatchStatus.DONE, None
