"""Typed errors of the viewer, under the one root `SlidemillError`. Its HTTP routes answer each
with its status and a problem-details body whose `detail` is the one-line message."""

from __future__ import annotations

from slidemill.schemas.errors import SlidemillError


class ViewerError(SlidemillError):
    """Base of everything the viewer raises on purpose."""


class ViewerConfigError(ViewerError):
    """The viewer cannot start as asked: no run folder, off loopback without a token, or
    OpenSeadragon not installed."""


class NotFoundError(ViewerError):
    """No such run, slide, layer or tile, batch or schedule (HTTP 404); also every associated
    image. The service raises this one too."""


class UnauthorizedError(ViewerError):
    """A request without the server's token, or with a wrong one (HTTP 401); the viewer's and
    the service's."""


class UnreadableResultError(ViewerError):
    """A slide's result or store is damaged (HTTP 500 for that slide alone)."""


class BadRequestError(ViewerError):
    """A query value out of range, e.g. an unknown colormap (HTTP 422)."""
