"""The HTTP API's request and response bodies (pydantic: they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slidemill.schemas import TissueMethod


class BatchRequest(BaseModel):
    """A batch to run: `slidemill run`'s arguments. Paths are absolute, inside allowed roots."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slides: list[str] = Field(min_length=1, description="Slide files and/or folders of slides.")
    model: str = Field(description="A model bundle, or a `slidemill train` folder.")
    out: str = Field(description="Output folder.")
    fallback_mpp: float | None = Field(default=None, gt=0, description="µm/px when unrecorded.")
    overlap_px: int = Field(default=0, ge=0)
    min_tissue_fraction: float = Field(default=0.25, ge=0, le=1)
    tissue_method: TissueMethod = TissueMethod.OTSU_SATURATION
    tiles_per_task: int = Field(default=256, ge=1)
    batch_size: int = Field(default=64, ge=1)
    retries: int = Field(default=2, ge=0, le=10)
    force: bool = False
    keep_tiles: bool = False
    keep_jpeg: bool | None = None
    worker_timeout_s: float = Field(default=300.0, gt=0)


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
    status: Literal["ok"]
    workers: int
    running: int


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
    max_attempts: int = Field(default=3, ge=1, description="Runs a failing slide is tried in.")
    settle_s: float = Field(
        default=60.0, ge=0, description="A file changed more recently waits for the next run."
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


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


class RunNow(BaseModel):
    batch: str | None = Field(description="The batch queued; None when the inbox had nothing new.")
