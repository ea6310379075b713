"""The one root of slidemill's errors.

Every error slidemill raises on purpose derives from `SlidemillError`, through one family per
room (`PipelineError`, `WorkerError`, `ClusterError`, …). Anything else that escapes is a bug
and keeps its traceback. Messages are one line that names the file or value and, where there is
one, the fix. The command line maps classes to exit codes in one place (`slidemill.cli`).
"""

from __future__ import annotations


class SlidemillError(Exception):
    """Base of everything slidemill raises on purpose."""


class InvalidInputError(SlidemillError):
    """A value the user gave (a flag, a setting, a file named on the command line) is wrong; not
    a single slide's problem. The fix is in the message."""


class LayoutError(SlidemillError):
    """A file or folder on disk does not follow slidemill's on-disk contract (a missing part, a
    layout version this release cannot read)."""


def one_line(err: BaseException) -> str:
    """Render any exception as one line (first line of its message, prefixed by its type when
    the type is not one of ours)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, SlidemillError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
