"""Slides from a request must lie inside the allowed roots when they are opened, not only when
they were submitted: a file swapped for a link while its batch waited in the queue would
otherwise be read, hashed and published.

`check_inside` resolves the path, opens what it resolves to without following a last link, and
checks the real path of the file actually opened (from /proc/self/fd where there is one): a link
swapped into the path at any point before that open is caught. The reader then opens that real
path, and `confirm` checks afterwards that the file there is still the one checked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slidemill.pipeline.errors import MissingSlideError, SlidePathNotAllowedError

_PROC_FD = Path("/proc/self/fd")


@dataclass(frozen=True, slots=True)
class CheckedFile:
    """A slide file found inside the roots."""

    path: Path
    """Its real path (no links), what the reader opens."""
    device: int
    """`st_dev` of the file opened when it was checked."""
    inode: int
    """`st_ino` of that file."""


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether the real path `path` lies inside one of `roots` (each resolved)."""
    return any(path.is_relative_to(Path(r).resolve()) for r in roots)


def check_inside(path: Path, roots: Sequence[Path]) -> CheckedFile:
    """The slide at `path`, when its real path is a regular file inside `roots`;
    `SlidePathNotAllowedError` when it leads outside them, `MissingSlideError` when it is gone."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as err:  # a loop of links, say
        raise SlidePathNotAllowedError(f"{path}: cannot be resolved ({err}); not read") from err
    if not inside(real, roots):
        raise _outside(path)
    try:
        # O_NONBLOCK: a FIFO put in place of a slide must not hang the worker
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise MissingSlideError(f"{path}: file not found") from err
    except OSError as err:  # ELOOP: a link put in place of the file since it was resolved
        raise SlidePathNotAllowedError(
            f"{path}: changed while it was being opened ({err.strerror}); not read"
        ) from err
    try:
        opened = (_PROC_FD / str(fd)).readlink() if _PROC_FD.is_dir() else real
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not inside(opened, roots):  # a folder on the way was swapped for a link
        raise _outside(path)
    if not stat.S_ISREG(st.st_mode):
        raise MissingSlideError(f"{path}: not a regular file")
    return CheckedFile(opened, st.st_dev, st.st_ino)


def confirm(checked: CheckedFile, source: Path) -> None:
    """Raise `SlidePathNotAllowedError` unless the file at `checked.path` is still the one
    checked (`source` names the slide in the message)."""
    try:
        st = checked.path.lstat()
    except OSError as err:
        raise MissingSlideError(f"{source}: file not found") from err
    # a link never passes, even one given the freed inode number of the file it replaced
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (checked.device, checked.inode):
        raise SlidePathNotAllowedError(f"{source}: replaced while it was being opened; not read")


def _outside(path: Path) -> SlidePathNotAllowedError:
    # where it leads is not said: the message reaches the client that submitted the path
    return SlidePathNotAllowedError(f"{path}: resolves outside the allowed roots; not read")
