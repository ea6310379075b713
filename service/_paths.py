"""Paths from requests: each must resolve (symlinks followed) inside an allowed root."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slidemill.service.errors import PathNotAllowedError


def inside_roots(path: str | Path, roots: Sequence[Path], what: str) -> Path:
    """`path` resolved, when it lies inside one of `roots`; else `PathNotAllowedError` naming
    the rule. Only absolute paths are taken: a relative one has no meaning to a server."""
    given = Path(path)
    if not given.is_absolute():
        raise PathNotAllowedError(f"{what} {str(path)!r}: give an absolute path")
    resolved = given.resolve(strict=False)
    for root in roots:
        if resolved.is_relative_to(root.resolve(strict=False)):
            return resolved
    raise PathNotAllowedError(
        f"{what} {path}: resolves outside the allowed roots ({', '.join(map(str, roots))})"
    )
