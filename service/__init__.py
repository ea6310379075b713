"""The lab service: an HTTP API (FastAPI under uvicorn) over a persistent job ledger (SQLAlchemy,
Alembic) whose batches run on one Dask cluster, shared, surviving the service's restarts.

Names load with their module on first use (PEP 562): a client of the service (`slidemill
status`) reads replies through the contracts without loading the server, its ledger and the
pipeline beneath it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slidemill.service._app import create_app
    from slidemill.service._contracts import (
        BatchList,
        BatchRequest,
        BatchView,
        Health,
        RunNow,
        ScheduleList,
        ScheduleRequest,
        ScheduleView,
        SlideView,
    )
    from slidemill.service._lease import ServiceLease, lease_is_stale
    from slidemill.service._paths import inside_roots
    from slidemill.service._runner import BatchRunner
    from slidemill.service._scheduler import Scheduler
    from slidemill.service._serve import serve
    from slidemill.service._settings import ServiceSettings, is_loopback, load_settings
    from slidemill.service.errors import (
        ConflictError,
        LedgerError,
        NotFoundError,
        PathNotAllowedError,
        ServiceConfigError,
        ServiceError,
        UnauthorizedError,
    )

_WHERE = {
    "create_app": "_app",
    **dict.fromkeys(
        (
            "BatchList",
            "BatchRequest",
            "BatchView",
            "Health",
            "RunNow",
            "ScheduleList",
            "ScheduleRequest",
            "ScheduleView",
            "SlideView",
        ),
        "_contracts",
    ),
    "ServiceLease": "_lease",
    "lease_is_stale": "_lease",
    "inside_roots": "_paths",
    "BatchRunner": "_runner",
    "Scheduler": "_scheduler",
    "serve": "_serve",
    "ServiceSettings": "_settings",
    "is_loopback": "_settings",
    "load_settings": "_settings",
    **dict.fromkeys(
        (
            "ConflictError",
            "LedgerError",
            "NotFoundError",
            "PathNotAllowedError",
            "ServiceConfigError",
            "ServiceError",
            "UnauthorizedError",
        ),
        "errors",
    ),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once is enough
    return value


__all__ = [
    "BatchList",
    "BatchRequest",
    "BatchRunner",
    "BatchView",
    "ConflictError",
    "Health",
    "LedgerError",
    "NotFoundError",
    "PathNotAllowedError",
    "RunNow",
    "ScheduleList",
    "ScheduleRequest",
    "ScheduleView",
    "Scheduler",
    "ServiceConfigError",
    "ServiceError",
    "ServiceLease",
    "ServiceSettings",
    "SlideView",
    "UnauthorizedError",
    "create_app",
    "inside_roots",
    "is_loopback",
    "lease_is_stale",
    "load_settings",
    "serve",
]
