"""The lab service: an HTTP API (FastAPI under uvicorn) over a persistent job ledger (SQLAlchemy,
Alembic) whose batches run on one Dask cluster, shared, surviving the service's restarts."""

from slidemill.service._app import create_app
from slidemill.service._bench import LoadReport, load_benchmark
from slidemill.service._contracts import (
    BatchList,
    BatchRequest,
    BatchView,
    Health,
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

__all__ = [
    "BatchList",
    "BatchRequest",
    "BatchRunner",
    "BatchView",
    "ConflictError",
    "Health",
    "LedgerError",
    "LoadReport",
    "NotFoundError",
    "PathNotAllowedError",
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
    "load_benchmark",
    "load_settings",
    "serve",
]
