"""A batch's progress bar, drawn from `BatchHooks` callbacks by whoever shows one (the CLI, the
demo); `run_batch` itself displays nothing, so the service and the benchmarks need no flag."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slidemill.pipeline.graph._batch import BatchHooks
from slidemill.schemas import SlideResult


@contextmanager
def batch_progress(
    console: Console | None = None, hooks: BatchHooks | None = None
) -> Iterator[BatchHooks]:
    """`hooks` (default: none) with a bar of the batch's slides added to their callbacks: pass
    what this yields to `run_batch`. Kept slides count as finished; failed ones are counted."""
    hooks = hooks or BatchHooks()
    progress = Progress(
        TextColumn("[bold]slides"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task("slides", total=None, failed=0, start=False)
    failed = 0

    def on_start(n_slides: int, n_kept: int) -> None:
        progress.update(bar, total=n_slides)
        progress.start_task(bar)
        if hooks.on_start is not None:
            hooks.on_start(n_slides, n_kept)

    def on_result(result: SlideResult) -> None:
        nonlocal failed
        failed += result.status == "failed"
        progress.update(bar, advance=1, failed=failed)
        if hooks.on_result is not None:
            hooks.on_result(result)

    with progress:
        yield dataclasses.replace(hooks, on_start=on_start, on_result=on_result)
