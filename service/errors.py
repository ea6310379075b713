"""Typed errors of the lab service, under the one root `SlidemillError`. The HTTP API answers each
with its status and a problem-details body whose `detail` is the one-line message."""

from __future__ import annotations

from slidemill.schemas.errors import SlidemillError


class ServiceError(SlidemillError):
    """Base of everything the service raises on purpose."""


class ServiceConfigError(ServiceError):
    """The service cannot start as configured (e.g. off loopback without a token)."""


class UnauthorizedError(ServiceError):
    """A request without the service's bearer token, or with a wrong one (HTTP 401)."""


class PathNotAllowedError(ServiceError):
    """A path in a request resolves outside every allowed root (HTTP 403); nothing is read."""


class NotFoundError(ServiceError):
    """No such batch or schedule (HTTP 404)."""


class ConflictError(ServiceError):
    """The request does not fit the batch's state, e.g. retrying one that is still running
    (HTTP 409)."""


class LedgerError(ServiceError):
    """The job ledger cannot do what was asked (a database problem, or a state that does not
    allow it)."""
