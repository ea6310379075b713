"""Exit codes, in one place: which of slidemill's errors are the user's to fix (2), which are a
run that failed (1). Anything that is not a `SlidemillError` is a bug and keeps its traceback."""

from __future__ import annotations

import functools
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from slidemill.schemas import InvalidInputError, SlidemillError

EXIT_FAILED = 1
"""The command ran and something failed: a slide, a cluster that did not start, a benchmark."""
EXIT_USAGE = 2
"""The input is wrong (flags, files, configs, bundles, labels); the message says what to fix."""


@functools.cache
def exit_codes() -> tuple[tuple[type[SlidemillError], int], ...]:
    """Error class → exit status; the first class that matches wins, so subclasses come before
    their bases. Built on first use: importing every room's errors loads the rooms (PyTorch
    among them), which `slidemill --help` and a command's parsing need not wait for."""
    from slidemill.cluster import ClusterConfigError, MissingExtraError
    from slidemill.schemas import LayoutError
    from slidemill.service.errors import ServiceConfigError
    from slidemill.viewer.errors import ViewerConfigError
    from slidemill.workers import (
        EvaluationError,
        ModelBundleError,
        TrainingError,
        UnknownComponentError,
    )

    return (
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
    return next(code for cls, code in exit_codes() if isinstance(err, cls))


def report(err: SlidemillError) -> NoReturn:
    """Print `err` as one line and exit with its status."""
    from slidemill.pipeline.errors import one_line

    # escaped: a message's brackets are text (pip install 'slidemill[viewer]'), not markup
    console.print(f"[red]error:[/red] {escape(one_line(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(err)) from err


def fail(message: str) -> NoReturn:
    """A usage error found while parsing (before any library call): one line, exit 2."""
    report(InvalidInputError(message))
