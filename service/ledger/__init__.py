"""The lab service's job ledger: batches and their slides in SQLite or PostgreSQL (SQLAlchemy 2,
Alembic migrations applied on open), claimed by the service's runners one at a time, surviving
its restarts. Callers get frozen records, never ORM objects."""

from slidemill.service.ledger._errors import (
    InvalidTransitionError,
    LedgerError,
    LedgerInputError,
    LedgerUnavailableError,
    NotRetryableError,
    UnknownBatchError,
    UnknownSlideError,
)
from slidemill.service.ledger._ledger import Ledger
from slidemill.service.ledger._records import BatchRecord, BatchStatus, SlideRecord, SlideState

__all__ = [
    "BatchRecord",
    "BatchStatus",
    "InvalidTransitionError",
    "Ledger",
    "LedgerError",
    "LedgerInputError",
    "LedgerUnavailableError",
    "NotRetryableError",
    "SlideRecord",
    "SlideState",
    "UnknownBatchError",
    "UnknownSlideError",
]
