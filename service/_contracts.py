"""The HTTP API's request and response bodies (pydantic: they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from slidemill.schemas import RunOptions
from slidemill.service._paths import usable_path

RequestPath = Annotated[str, AfterValidator(usable_path)]
"""A path in a request, checked for what the system can take (a 422 naming the field); the
routes check the allowed roots, and the run checks them again when it opens the path."""


class BatchRequest(RunOptions):
    """A batch to run: `slidemill run`'s arguments, with its options and their bounds declared
    once (`RunOptions`). Paths are absolute, inside allowed roots."""

    slides: list[RequestPath] = Field(
        min_length=1, description="Slide files and/or folders of slides."
    )
    model: RequestPath = Field(description="A model bundle, or a `slidemill train` folder.")
    out: RequestPath = Field(description="Output folder.")


class SlideView(BaseModel):
    """One slide of a batch, as the ledger has it (written when its result is published)."""

    slide_id: str
    path: str
    state: Literal["pending", "done", "failed", "skipped"]
    label: str | None
    class_names: list[str]
    probabilities: list[float]
    n_tiles: int
    error: str | None
    timings: dict[str, float]
    output: str | None = Field(description="The slide's published folder.")
    flags: list[str] = Field(
        default_factory=list, description="QC flag codes of its result (empty: none)."
    )
    updated_at: datetime


class BatchView(BaseModel):
    """A batch: state, counts, and (for one batch) its slides."""

    id: str
    origin: str
    status: Literal["queued", "running", "done", "stopped", "cancelled"]
    priority: int
    out: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    n_slides: int
    n_done: int
    n_failed: int
    n_skipped: int
    n_pending: int
    results_csv: str = Field(description="The batch's results.csv (written when it ends).")
    viewer: str = Field(description="The batch's page in the viewer, a path on this service.")
    slides: list[SlideView] | None = None
    request: dict[str, object] | None = None


class BatchList(BaseModel):
    batches: list[BatchView]


class Health(BaseModel):
    """The service's state: `failing` (HTTP 503) when one of its threads has stopped or its
    lease on the ledger was taken, with one line per problem."""

    status: Literal["ok", "failing"]
    workers: int
    running: int
    problems: list[str] = Field(default_factory=list)


SCHEDULE_MAX_SETTLE_S = 86_400.0
"""A schedule's settle time, at most: a file unchanged for a day is not being written, and a
bound keeps the inbox arithmetic finite."""
SCHEDULE_MAX_ATTEMPTS = 100
"""Runs an inbox slide may fail in before it is held, at most."""


class ScheduleRequest(BaseModel):
    """A nightly schedule: when (cron in a time zone), what (an inbox folder, a model), where
    (an output folder per run, `{date}` filled with the window's local date)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique; letters, digits, - and _.")
    cron: str = Field(description='Five-field cron, e.g. "0 22 * * *".')
    tz: str = Field(default="UTC", description="IANA time zone the cron is read in.")
    inbox: str = Field(description="Folder whose new slides each run takes.")
    model: str = Field(description="A model bundle, or a `slidemill train` folder.")
    out: str = Field(description="Output folder of a run, e.g. /data/out/{date}.")
    catch_up: Literal["latest", "all", "skip"] = Field(
        default="latest",
        description="After downtime: run the latest missed window once, every one, or none.",
    )
    options: dict[str, object] = Field(
        default_factory=dict, description="`run` options of each batch (as in BatchRequest)."
    )
    max_attempts: int = Field(
        default=3, ge=1, le=SCHEDULE_MAX_ATTEMPTS, description="Runs a failing slide is tried in."
    )
    settle_s: float = Field(
        default=60.0,
        ge=0,
        le=SCHEDULE_MAX_SETTLE_S,
        allow_inf_nan=False,
        description="A file changed more recently waits for the next run (seconds).",
    )


class ScheduleView(BaseModel):
    name: str
    cron: str
    tz: str
    inbox: str
    model: str
    out: str
    catch_up: str
    options: dict[str, object]
    max_attempts: int
    settle_s: float
    paused: bool
    created_at: datetime
    last_fired: datetime | None
    next_window: datetime | None
    last_error: str | None = Field(
        default=None, description="Why its last run failed; cleared by a run that works."
    )
    last_error_at: datetime | None = None
    invalid: str | None = Field(
        default=None,
        description="Why the stored schedule no longer loads (kept by an older version): it "
        "fires nothing; remove it and add it again.",
    )


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


class RunNow(BaseModel):
    batch: str | None = Field(description="The batch queued; None when the inbox had nothing new.")
