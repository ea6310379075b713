"""Nightly schedules and their inbox, as a pure core: cron windows on a schedule's wall clock
with catch-up after downtime, output folders per window, and which inbox files a run takes.
The service's scheduler loop and the ledger carry the decisions out."""

from slidemill.service.schedules._errors import (
    InvalidScheduleError,
    ScheduleError,
    ScheduleFailedError,
)
from slidemill.service.schedules._inbox import (
    Held,
    InboxDecision,
    InboxFile,
    InboxState,
    Moved,
    SeenFile,
    file_sha256,
    scan,
    take,
)
from slidemill.service.schedules._schedule import (
    MAX_ATTEMPTS,
    MAX_CATCH_UP,
    MAX_SETTLE_S,
    SKIP_GRACE,
    CatchUp,
    Schedule,
    next_window,
    output_folder,
    windows_due,
)

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_CATCH_UP",
    "MAX_SETTLE_S",
    "SKIP_GRACE",
    "CatchUp",
    "Held",
    "InboxDecision",
    "InboxFile",
    "InboxState",
    "InvalidScheduleError",
    "Moved",
    "Schedule",
    "ScheduleError",
    "ScheduleFailedError",
    "SeenFile",
    "file_sha256",
    "next_window",
    "output_folder",
    "scan",
    "take",
    "windows_due",
]
