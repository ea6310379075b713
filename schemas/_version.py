"""The installed slidemill version: what provenance records and image tags are made from."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def slidemill_version() -> str:
    """The installed slidemill version, recorded in every output's provenance."""
    try:
        return version("slidemill")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
