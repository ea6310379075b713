"""The schedules' errors, under the service's `ServiceError`."""

from __future__ import annotations

from slidemill.schemas.errors import InvalidInputError
from slidemill.service.errors import ConflictError, ServiceError


class ScheduleError(ServiceError):
    """Base of what the scheduling core raises on purpose."""


class InvalidScheduleError(ScheduleError, InvalidInputError):
    """A schedule's field is malformed (a name, a cron expression, a time zone, an output
    template, an option); the message names the field and the fix (HTTP 422)."""


class ScheduleFailedError(ScheduleError, ConflictError):
    """Running the schedule failed on something that is not one of slidemill's own errors (a
    bug): the message names the schedule and the cause, the service log has the traceback
    (HTTP 409; the failure is also kept on the schedule)."""


__all__ = ["InvalidScheduleError", "ScheduleError", "ScheduleFailedError"]
