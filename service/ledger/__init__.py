"""The lab service's job ledger: batches and their slides, schedules and the inbox files they
have seen, in SQLite or PostgreSQL (SQLAlchemy 2, Alembic migrations applied on open); batches
are claimed by the service's runners one at a time, surviving its restarts. Callers get frozen
records, never ORM objects."""

from slidemill.service.ledger._errors import (
    DuplicateScheduleError,
    InvalidTransitionError,
    LedgerError,
    LedgerInputError,
    LedgerInUseError,
    LedgerUnavailableError,
    NotRetryableError,
    UnknownBatchError,
    UnknownInboxFileError,
    UnknownScheduleError,
    UnknownSlideError,
)
from slidemill.service.ledger._ledger import Ledger
from slidemill.service.ledger._records import (
    BatchRecord,
    BatchStatus,
    BrokenScheduleRecord,
    InboxRecord,
    LeaseRecord,
    ScheduleRecord,
    SlideRecord,
    SlideState,
)

__all__ = [
    "BatchRecord",
    "BatchStatus",
    "BrokenScheduleRecord",
    "DuplicateScheduleError",
    "InboxRecord",
    "InvalidTransitionError",
    "LeaseRecord",
    "Ledger",
    "LedgerError",
    "LedgerInUseError",
    "LedgerInputError",
    "LedgerUnavailableError",
    "NotRetryableError",
    "ScheduleRecord",
    "SlideRecord",
    "SlideState",
    "UnknownBatchError",
    "UnknownInboxFileError",
    "UnknownScheduleError",
    "UnknownSlideError",
]
