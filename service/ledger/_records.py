"""What the ledger hands out: statuses and frozen records, never ORM objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from slidemill.service.schedules import InboxState, Schedule


class BatchStatus(StrEnum):
    """Where a batch stands. `queued` and `running` are open; the other three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    """Every slide finished (some may have failed)."""
    STOPPED = "stopped"
    """The batch ended early with a reason (no workers, an error)."""
    CANCELLED = "cancelled"
    """A user cancelled it."""

    @property
    def final(self) -> bool:
        """Whether the batch has ended (`done`, `stopped` or `cancelled`)."""
        return self not in (BatchStatus.QUEUED, BatchStatus.RUNNING)


class SlideState(StrEnum):
    """Where one slide of a batch stands; `pending` until its result is published."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch as the ledger holds it. Datetimes are timezone-aware UTC."""

    id: str
    """32 hex digits (a uuid4)."""
    origin: str
    """Who submitted it: `api`, `schedule:<name>`, `retry:<batch id>`."""
    status: BatchStatus
    """Where it stands."""
    priority: int
    """Higher runs first; among equals, the oldest."""
    out: str
    """The output folder."""
    request: dict[str, Any]
    """The JSON the batch was submitted with."""
    created_at: datetime
    """When it was queued."""
    updated_at: datetime
    """When anything about it (its status, a slide, its counts) last changed."""
    started_at: datetime | None
    """When it first started running; kept when a restarted service resumes it."""
    finished_at: datetime | None
    """When it reached a final status."""
    error: str | None
    """Why it stopped or was cancelled, one line."""
    n_slides: int
    """Slides in the batch."""
    n_done: int
    """Slides done."""
    n_failed: int
    """Slides failed, each with its reason in its slide record."""
    n_skipped: int
    """Slides skipped."""
    cancel_requested: bool = False
    """A user asked to cancel it while it ran; the runner stops it."""

    @property
    def n_pending(self) -> int:
        """Slides without a result yet."""
        return self.n_slides - self.n_done - self.n_failed - self.n_skipped


@dataclass(frozen=True, slots=True)
class SlideRecord:
    """One slide of a batch, as written when its result was published."""

    batch_id: str
    """The batch it belongs to."""
    slide_id: str
    """Its id within the batch (unique there)."""
    path: str
    """The slide file."""
    state: SlideState
    """Where it stands."""
    label: str | None
    """The predicted class, for a done slide."""
    class_names: tuple[str, ...]
    """The model's classes, in the order of `probabilities`."""
    probabilities: tuple[float, ...]
    """One per class name."""
    n_tiles: int
    """Tissue tiles the prediction used."""
    error: str | None
    """Why it failed or was skipped, one line."""
    timings: dict[str, float]
    """Seconds per stage."""
    output: str | None
    """Its published output folder."""
    flags: tuple[str, ...]
    """QC flag codes of its result; empty when none (or not yet published)."""
    updated_at: datetime
    """When it was last written (timezone-aware UTC)."""


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A schedule as the ledger holds it. Datetimes are timezone-aware UTC."""

    schedule: Schedule
    """Its definition (with `paused`)."""
    created_at: datetime
    """When it was added: the first window is after it."""
    updated_at: datetime
    """When it was last changed or fired."""
    last_fired: datetime | None
    """The latest window fired (or passed over); the next windows are after it."""
    last_error: str | None = None
    """Why its last run failed, one line; None once a run works."""
    last_error_at: datetime | None = None
    """When that run failed."""

    @property
    def name(self) -> str:
        """The schedule's name."""
        return self.schedule.name


@dataclass(frozen=True, slots=True)
class BrokenScheduleRecord:
    """A stored schedule that no longer makes a `Schedule` (kept by an older version, before
    today's checks): reported with its reason, never fired; it can be paused or removed."""

    name: str
    """The schedule's name."""
    reason: str
    """Why it does not load, one line naming the field."""
    stored: Mapping[str, Any]
    """Its definition as stored: cron, tz, inbox, model, out_template, catch_up, options,
    paused, max_attempts, settle_s."""
    created_at: datetime
    """When it was added."""
    updated_at: datetime
    """When it was last changed or fired."""
    last_fired: datetime | None
    """The latest window fired before it stopped loading."""
    last_error: str | None = None
    """Why its last run failed, one line."""
    last_error_at: datetime | None = None
    """When that run failed."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The lease of the service that works the ledger: who holds it and when it last said so."""

    host: str
    """Host name of the holding process."""
    pid: int
    """Its process id on that host."""
    process_started: float
    """When that process started (epoch seconds): tells it from a later one given its PID."""
    token: str
    """Unique to this taking of the lease."""
    acquired_at: datetime
    """When it was taken (timezone-aware UTC)."""
    heartbeat_at: datetime
    """When its holder last renewed it (timezone-aware UTC)."""


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """An inbox file a schedule has seen, keyed by (schedule, path, size, mtime_ns)."""

    schedule: str
    """The schedule's name."""
    path: str
    """Where the file is (after a move, its new path)."""
    size: int
    """Bytes."""
    mtime_ns: int
    """Modification time, ns since the epoch."""
    sha256: str | None
    """Its content's hash, when it was computed."""
    state: InboxState
    """Where it stands."""
    attempts: int
    """How many times a batch took it."""
    last_error: str | None
    """Why it last failed (or was held), one line."""
    batch_id: str | None
    """The batch that last took it."""
    first_seen: datetime
    """When a run first took it."""
    updated_at: datetime
    """When it last changed."""
