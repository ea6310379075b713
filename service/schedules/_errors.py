"""The schedules' errors, under the service's `ServiceError`."""

from __future__ import annotations

from slidemill.schemas.errors import InvalidInputError
from slidemill.service.errors import ServiceError


class ScheduleError(ServiceError):
    """Base of what the scheduling core raises on purpose."""


class InvalidScheduleError(ScheduleError, InvalidInputError):
    """A schedule's field is malformed (a name, a cron expression, a time zone, an output
    template, an option); the message names the field and the fix (HTTP 422)."""


__all__ = ["InvalidScheduleError", "ScheduleError"]
