"""A schedule is checked whole when it is made, against bounds declared once: the settle time and
the attempts are finite and bounded, and its run options are what a batch accepts; the HTTP
contract refuses the same values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from slidemill.service import ScheduleRequest
from slidemill.service.schedules import (
    MAX_ATTEMPTS,
    MAX_SETTLE_S,
    InvalidScheduleError,
)
from tests.service.schedules.test_schedules import _schedule


def _request(**changes: Any) -> ScheduleRequest:
    fields: dict[str, Any] = {
        "name": "nightly",
        "cron": "0 22 * * *",
        "inbox": "/lab/inbox",
        "model": "/models/prostate",
        "out": "/lab/out/{date}",
    }
    return ScheduleRequest.model_validate(fields | changes)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("settle_s", 1e308),
        ("settle_s", float("inf")),
        ("settle_s", float("nan")),
        ("settle_s", MAX_SETTLE_S + 0.5),
        ("settle_s", -1.0),
        ("max_attempts", MAX_ATTEMPTS + 1),
        ("max_attempts", 10**18),
        ("max_attempts", 0),
    ],
)
def test_out_of_bounds_values_are_refused_by_both_naming_the_field(
    field: str, value: float
) -> None:
    with pytest.raises(InvalidScheduleError, match=field):
        _schedule(**{field: value})
    with pytest.raises(ValidationError) as caught:
        _request(**{field: value})
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


def test_the_bounds_themselves_are_accepted_by_both() -> None:
    schedule = _schedule(settle_s=MAX_SETTLE_S, max_attempts=MAX_ATTEMPTS)
    request = _request(settle_s=MAX_SETTLE_S, max_attempts=MAX_ATTEMPTS)
    assert (schedule.settle_s, schedule.max_attempts) == (request.settle_s, request.max_attempts)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"retries": 99}, "retries"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_tissue_fraction": "lots"}, "min_tissue_fraction"),
        ({"tissue_method": "guess"}, "tissue_method"),
    ],
)
def test_run_options_a_batch_would_refuse_are_refused_at_creation(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidScheduleError) as caught:
        _schedule(options=options)
    message = str(caught.value)
    assert f"options.{named}" in message and "\n" not in message


def test_valid_run_options_are_kept_as_given() -> None:
    assert _schedule(options={"retries": 1, "batch_size": 8}).options == {
        "retries": 1,
        "batch_size": 8,
    }
