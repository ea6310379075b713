"""The `Schedule` value object and its cron windows: pure, no I/O, no clock of its own.

Windows are evaluated on the schedule's wall clock: croniter walks naive local times (where a
cron expression means what a person reads in it), and each match is placed on the time line by
`zoneinfo` with `fold=0`. So a wall time that occurs twice (autumn) is one window, at its first
occurrence; one that does not occur (spring) is one window at the instant it is shifted to
(02:30 in a skipped 02:00-03:00 hour is 03:30 of the new offset). Two matches that land on the
same instant (02:30 shifted and a real 03:30) are one window.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import ValidationError

from slidemill.service._contracts import (
    SCHEDULE_MAX_ATTEMPTS,
    SCHEDULE_MAX_SETTLE_S,
    BatchRequest,
)
from slidemill.service.schedules._errors import InvalidScheduleError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""A schedule's name: a slug, also used in batch origins (`schedule:<name>`) and templates."""

MAX_SETTLE_S = SCHEDULE_MAX_SETTLE_S
"""`settle_s`, at most (declared with the HTTP contract, `ScheduleRequest`)."""
MAX_ATTEMPTS = SCHEDULE_MAX_ATTEMPTS
"""`max_attempts`, at most (declared with the HTTP contract, `ScheduleRequest`)."""

MAX_CATCH_UP = 366
"""At most this many windows fire at once under `catch_up: all`; the ones after them are due
at the next check (each call starts after the last window fired), so none is dropped."""

SKIP_GRACE = timedelta(minutes=5)
"""Under `catch_up: skip`, a window this recent still fires: the service's own check interval
and a short restart are not downtime."""

_DST_MARGIN = timedelta(hours=3)
"""More than any zone's offset change (at most 2 h): a local wall time maps to an instant
within this of its naive reading, so walking the wall clock this far past an interval's ends
finds every window in it."""

_TEMPLATE_FIELDS = frozenset({"date", "time", "name"})
_NOT_OPTIONS = frozenset({"slides", "model", "out"})
_PLACEHOLDER_PATHS = {"slides": ["/"], "model": "/", "out": "/"}
"""What a schedule's options are checked with as a batch; each window supplies its own."""


class CatchUp(StrEnum):
    """What fires after downtime, when more than one window was missed."""

    LATEST = "latest"
    """Only the last missed window (the default): a nightly run after a week away runs once."""
    ALL = "all"
    """Every missed window, oldest first (at most `MAX_CATCH_UP` at a time)."""
    SKIP = "skip"
    """None of them; only a window within `SKIP_GRACE` of now fires."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A nightly (or any cron) run over an inbox folder. Checked when made: a malformed field
    raises `InvalidScheduleError` naming it. Not hashable (its options are a mapping)."""

    name: str
    """A slug: lower-case letters, digits, `_` and `-`, at most 64, starting with a letter or
    digit."""
    cron: str
    """A 5-field cron expression (minute hour day-of-month month day-of-week), on `tz`'s
    wall clock."""
    tz: str
    """An IANA time zone name, e.g. `Europe/Berlin`."""
    inbox: str
    """The folder whose new slides each run takes."""
    model: str
    """A model bundle or a `slidemill train` folder."""
    out_template: str
    """The output folder per window: `{date}` (local `YYYY-MM-DD`) is required, `{time}`
    (local `HHMM`) and `{name}` are allowed."""
    catch_up: CatchUp = CatchUp.LATEST
    """What fires after downtime."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """`run`'s options for each batch (the HTTP `BatchRequest` without slides, model, out)."""
    paused: bool = False
    """A paused schedule fires nothing; windows missed while paused follow `catch_up`."""
    max_attempts: int = 3
    """An inbox slide that failed this many times is held with its reason, not taken again
    (1 to `MAX_ATTEMPTS`)."""
    settle_s: float = 60.0
    """An inbox file modified less than this long ago may still be being written: left for the
    next run (0 to `MAX_SETTLE_S` seconds)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise InvalidScheduleError(
                f"schedule name {self.name!r}: use 1-64 lower-case letters, digits, '_' or '-', "
                "starting with a letter or digit"
            )
        _check_cron(self.name, self.cron)
        _zone(self.name, self.tz)
        try:
            object.__setattr__(self, "catch_up", CatchUp(self.catch_up))
        except ValueError as err:
            raise InvalidScheduleError(
                f"schedule {self.name}: catch_up {self.catch_up!r} is not one of "
                f"{', '.join(c.value for c in CatchUp)}"
            ) from err
        for what in ("inbox", "model"):
            value = getattr(self, what)
            if not isinstance(value, str) or not value.strip():
                raise InvalidScheduleError(f"schedule {self.name}: give a path for {what}")
        _check_template(self.name, self.out_template)
        object.__setattr__(self, "options", _check_options(self.name, self.options))
        if type(self.paused) is not bool:
            raise InvalidScheduleError(f"schedule {self.name}: paused must be true or false")
        if type(self.max_attempts) is not int or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise InvalidScheduleError(
                f"schedule {self.name}: max_attempts {self.max_attempts!r} must be an integer "
                f"from 1 to {MAX_ATTEMPTS}"
            )
        if (
            isinstance(self.settle_s, bool)
            or not isinstance(self.settle_s, int | float)
            or not math.isfinite(self.settle_s)
            or not 0 <= self.settle_s <= MAX_SETTLE_S
        ):
            raise InvalidScheduleError(
                f"schedule {self.name}: settle_s {self.settle_s!r} must be seconds from 0 to "
                f"{MAX_SETTLE_S:g}"
            )
        object.__setattr__(self, "settle_s", float(self.settle_s))

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.tz)


def windows_due(
    schedule: Schedule,
    last_fired: datetime | None,
    created_at: datetime,
    now: datetime,
    *,
    grace: timedelta = SKIP_GRACE,
) -> list[datetime]:
    """The windows to fire now (aware UTC, oldest first): those in `(last_fired or created_at,
    now]`, reduced by the schedule's `catch_up`: `latest` the last of them, `all` each (the
    first `MAX_CATCH_UP`; the rest at the next call, after `last_fired` moves), `skip` the last
    only if it is within `grace` of `now`. A paused schedule's windows are still reported:
    whether to fire them is the caller's call (it records them as passed)."""
    start = _utc(last_fired if last_fired is not None else created_at, "last_fired/created_at")
    end = _utc(now, "now")
    if end <= start:
        return []
    zone = schedule.zone
    if schedule.catch_up is CatchUp.ALL:
        return _forward(schedule.cron, zone, start, end, limit=MAX_CATCH_UP)
    last = _last_before(schedule.cron, zone, start, end)
    if last is None:
        return []
    if schedule.catch_up is CatchUp.SKIP and end - last > grace:
        return []
    return [last]


def next_window(schedule: Schedule, after: datetime) -> datetime:
    """The first window strictly after `after` (aware UTC)."""
    start = _utc(after, "after")
    found = _forward(schedule.cron, schedule.zone, start, None, limit=1)
    return found[0]


def output_folder(schedule: Schedule, window: datetime) -> str:
    """The window's output folder: the template filled with the window's local date
    (`YYYY-MM-DD`), time (`HHMM`) and the schedule's name."""
    local = _utc(window, "window").astimezone(schedule.zone)
    return schedule.out_template.format(
        date=local.strftime("%Y-%m-%d"), time=local.strftime("%H%M"), name=schedule.name
    )


# -- inside ----------------------------------------------------------------------------------


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidScheduleError(
            f"{what} {value.isoformat()} has no time zone; give an aware datetime"
        )
    return value.astimezone(UTC)


def _local_naive(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """A wall time's instant: the first of two (fold=0); a skipped one is shifted forward by
    the gap (zoneinfo reads it with the offset before the change)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _walls(cron: str, start: datetime, *, backward: bool = False) -> Iterator[datetime]:
    it = croniter(cron, start)
    step = it.get_prev if backward else it.get_next
    while True:
        try:
            yield step(datetime)
        except CroniterBadDateError:
            return


def _forward(
    cron: str, zone: ZoneInfo, start: datetime, end: datetime | None, *, limit: int
) -> list[datetime]:
    """The first `limit` windows in (start, end] (end None: unbounded), oldest first."""
    found: set[datetime] = set()
    stop_wall = None if end is None else _local_naive(end, zone) + _DST_MARGIN
    enough_wall: datetime | None = None
    for wall in _walls(cron, _local_naive(start, zone) - _DST_MARGIN):
        if (stop_wall is not None and wall > stop_wall) or (
            enough_wall is not None and wall > enough_wall
        ):
            break
        instant = _instant(wall, zone)
        if instant > start and (end is None or instant <= end):
            found.add(instant)
            if enough_wall is None and len(found) >= limit:
                # matches within the margin may still map before this one: look that far on
                enough_wall = wall + 2 * _DST_MARGIN
    return sorted(found)[:limit]


def _last_before(cron: str, zone: ZoneInfo, start: datetime, end: datetime) -> datetime | None:
    """The last window in (start, end], or None."""
    best: datetime | None = None
    floor_wall = _local_naive(start, zone) - _DST_MARGIN
    enough_wall: datetime | None = None
    for wall in _walls(cron, _local_naive(end, zone) + _DST_MARGIN, backward=True):
        if wall < floor_wall or (enough_wall is not None and wall < enough_wall):
            break
        instant = _instant(wall, zone)
        if start < instant <= end and (best is None or instant > best):
            best = instant
            if enough_wall is None:
                enough_wall = wall - 2 * _DST_MARGIN
    return best


def _check_cron(name: str, cron: Any) -> None:
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidScheduleError(
            f"schedule {name}: cron {cron!r} is not a 5-field cron expression "
            "(minute hour day-of-month month day-of-week, e.g. '0 22 * * *')"
        )
    try:
        croniter(cron, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError as err:
        raise InvalidScheduleError(f"schedule {name}: cron {cron!r} never fires") from err


def _zone(name: str, tz: Any) -> ZoneInfo:
    try:
        if not isinstance(tz, str) or not tz:
            raise ValueError(tz)
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise InvalidScheduleError(
            f"schedule {name}: time zone {tz!r} is not an IANA name (e.g. Europe/Berlin, UTC)"
        ) from err


def _check_template(name: str, template: Any) -> None:
    if not isinstance(template, str) or not template.strip():
        raise InvalidScheduleError(f"schedule {name}: give an output template with {{date}}")
    fields: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InvalidScheduleError(
            f"schedule {name}: output template {template!r} has unbalanced braces ({err})"
        ) from err
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in _TEMPLATE_FIELDS or spec or conversion:
            raise InvalidScheduleError(
                f"schedule {name}: output template {template!r} has {{{field_name}}}; "
                "use only {date}, {time} and {name}"
            )
        fields.add(field_name)
    if "date" not in fields:
        raise InvalidScheduleError(
            f"schedule {name}: output template {template!r} needs {{date}}, so each night "
            "writes its own folder"
        )


def _check_options(name: str, options: Any) -> Mapping[str, Any]:
    if not isinstance(options, Mapping):
        raise InvalidScheduleError(f"schedule {name}: options must be a mapping of run options")
    allowed = set(BatchRequest.model_fields) - _NOT_OPTIONS
    unknown = sorted(str(k) for k in options if k not in allowed)
    if unknown:
        raise InvalidScheduleError(
            f"schedule {name}: unknown run options {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    try:  # a copy that a caller cannot change, and a clear message rather than the database's
        document = json.loads(json.dumps(dict(options), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise InvalidScheduleError(f"schedule {name}: options are not JSON: {err}") from err
    try:  # checked now as each window's batch will be, so that no window fails on them
        BatchRequest.model_validate({**document, **_PLACEHOLDER_PATHS})
    except ValidationError as err:
        problems = "; ".join(
            f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
        )
        raise InvalidScheduleError(f"schedule {name}: {problems}") from err
    return MappingProxyType(document)
