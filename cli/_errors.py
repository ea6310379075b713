"""Exit codes, in one place: which of slidemill's errors are the user's to fix (2), which are a
run that failed (1). Anything that is not a `SlidemillError` is a bug and keeps its traceback."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from slidemill.cluster import ClusterConfigError, MissingExtraError
from slidemill.pipeline.errors import one_line
from slidemill.schemas import InvalidInputError, LayoutError, SlidemillError
from slidemill.service.errors import ServiceConfigError
from slidemill.viewer import ViewerConfigError
from slidemill.workers import (
    EvaluationError,
    ModelBundleError,
    TrainingError,
    UnknownComponentError,
)

EXIT_FAILED = 1
"""The command ran and something failed: a slide, a cluster that did not start, a benchmark."""
EXIT_USAGE = 2
"""The input is wrong (flags, files, configs, bundles, labels); the message says what to fix."""

# The first class that matches wins, so subclasses come before their bases.
EXIT_CODES: tuple[tuple[type[SlidemillError], int], ...] = (
    (InvalidInputError, EXIT_USAGE),
    (LayoutError, EXIT_USAGE),
    (ClusterConfigError, EXIT_USAGE),
    (MissingExtraError, EXIT_USAGE),
    (ModelBundleError, EXIT_USAGE),
    (UnknownComponentError, EXIT_USAGE),
    (TrainingError, EXIT_USAGE),
    (EvaluationError, EXIT_USAGE),
    (ServiceConfigError, EXIT_USAGE),
    (ViewerConfigError, EXIT_USAGE),
    (SlidemillError, EXIT_FAILED),
)

console = Console(stderr=True)
"""Where every command reports: stderr, so stdout stays for what a command prints as data."""


def exit_code(err: SlidemillError) -> int:
    """The exit status for one of slidemill's own errors."""
    return next(code for cls, code in EXIT_CODES if isinstance(err, cls))


def report(err: SlidemillError) -> NoReturn:
    """Print `err` as one line and exit with its status."""
    console.print(f"[red]error:[/red] {one_line(err)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(err)) from err


def fail(message: str) -> NoReturn:
    """A usage error found while parsing (before any library call): one line, exit 2."""
    report(InvalidInputError(message))
