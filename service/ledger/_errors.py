"""The ledger's errors, under the service's `LedgerError`. Each also derives from the service
error that says how the HTTP API answers it (404, 409, 422), so the API needs no table of its
own for them."""

from __future__ import annotations

from slidemill.schemas.errors import InvalidInputError
from slidemill.service.errors import ConflictError, LedgerError, NotFoundError


class UnknownBatchError(LedgerError, NotFoundError):
    """A change named a batch the ledger does not hold."""


class UnknownSlideError(LedgerError, NotFoundError):
    """A change named a slide that is not part of its batch."""


class InvalidTransitionError(LedgerError, ConflictError):
    """The batch's status does not allow the change (finishing a batch twice, finishing it as
    `queued`)."""


class NotRetryableError(LedgerError, ConflictError):
    """A retry of a batch that has not finished, or that has no failed slides."""


class LedgerInputError(LedgerError, InvalidInputError):
    """A value given to the ledger is malformed: a naive datetime, a slide id twice in one batch,
    a request that is not JSON, probabilities that do not match the class names."""


class UnknownScheduleError(LedgerError, NotFoundError):
    """A change named a schedule the ledger does not hold."""


class DuplicateScheduleError(LedgerError, ConflictError):
    """A schedule of that name exists already; remove it first, or choose another name."""


class UnknownInboxFileError(LedgerError, NotFoundError):
    """A result for an inbox file the schedule has not taken."""


class LedgerInUseError(LedgerError):
    """Another service holds the ledger's lease and is alive: the message names it (host, PID,
    since when). One service works a ledger, or two would resume each other's batches."""


class LedgerUnavailableError(LedgerError):
    """The database cannot be reached or stays locked; the message names it (password masked)."""


__all__ = [
    "DuplicateScheduleError",
    "InvalidTransitionError",
    "LedgerError",
    "LedgerInUseError",
    "LedgerInputError",
    "LedgerUnavailableError",
    "NotRetryableError",
    "UnknownBatchError",
    "UnknownInboxFileError",
    "UnknownScheduleError",
    "UnknownSlideError",
]
