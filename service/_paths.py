"""Paths from requests: each must be one the system can take, and resolve (symlinks followed)
inside an allowed root."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from slidemill.schemas import InvalidInputError
from slidemill.service.errors import PathNotAllowedError

PATH_MAX = 4096
"""Linux's limit on a path, in bytes with its terminating NUL (`PC_PATH_MAX`)."""
NAME_MAX = 255
"""Linux's limit on one name in a path, in bytes (`PC_NAME_MAX`)."""


def usable_path(value: str) -> str:
    """`value`, when the system can take it as a path: no NUL byte, encodable, within the
    limits; else `ValueError` saying why (pydantic makes it a 422 naming the field)."""
    if "\x00" in value:
        raise ValueError("contains a NUL byte")
    try:
        encoded = os.fsencode(value)
    except UnicodeEncodeError as err:
        raise ValueError("is not a valid file name (unpaired surrogate)") from err
    if len(encoded) >= PATH_MAX:
        raise ValueError(f"is longer than the limit of {PATH_MAX - 1} bytes")
    if any(len(name) > NAME_MAX for name in encoded.split(b"/")):
        raise ValueError(f"has a name longer than the limit of {NAME_MAX} bytes")
    return value


def inside_roots(path: str | Path, roots: Sequence[Path], what: str) -> Path:
    """`path` resolved, when it lies inside one of `roots`; else `PathNotAllowedError` naming
    the rule. Only absolute paths are taken: a relative one has no meaning to a server."""
    try:
        usable_path(str(path))
    except ValueError as err:
        shown = str(path) if len(str(path)) <= 80 else f"{str(path)[:80]}…"
        raise InvalidInputError(f"{what} {shown!r}: {err}") from err
    given = Path(path)
    if not given.is_absolute():
        raise PathNotAllowedError(f"{what} {str(path)!r}: give an absolute path")
    try:
        resolved = given.resolve(strict=False)
    except (OSError, RuntimeError) as err:  # a link loop, a name the file system refuses
        raise InvalidInputError(f"{what} {path}: cannot be resolved ({err})") from err
    for root in roots:
        if resolved.is_relative_to(root.resolve(strict=False)):
            return resolved
    raise PathNotAllowedError(
        f"{what} {path}: resolves outside the allowed roots ({', '.join(map(str, roots))})"
    )
