"""Typed errors of the lab service, under the one root `SlidemillError`. The HTTP API answers each
with its status and a problem-details body whose `detail` is the one-line message.

`NotFoundError` (404) and `UnauthorizedError` (401) are the viewer's, the lower of the two rooms
that serve HTTP: one class each, whichever room raises it."""

from __future__ import annotations

from slidemill.schemas.errors import SlidemillError
from slidemill.viewer.errors import NotFoundError, UnauthorizedError

__all__ = [
    "ConflictError",
    "LedgerError",
    "NotFoundError",
    "PathNotAllowedError",
    "ServiceConfigError",
    "ServiceError",
    "UnauthorizedError",
]


class ServiceError(SlidemillError):
    """Base of everything the service raises on purpose."""


class ServiceConfigError(ServiceError):
    """The service cannot start as configured (e.g. off loopback without a token)."""


class PathNotAllowedError(ServiceError):
    """A path in a request resolves outside every allowed root (HTTP 403); nothing is read."""


class ConflictError(ServiceError):
    """The request does not fit the batch's state, e.g. retrying one that is still running
    (HTTP 409)."""


class LedgerError(ServiceError):
    """The job ledger cannot do what was asked (a database problem, or a state that does not
    allow it)."""
