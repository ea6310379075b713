"""The batch's progress bar, drawn from its callbacks: no cluster, no run."""

from __future__ import annotations

import io

from rich.console import Console

from slidemill.pipeline.graph import BatchHooks, batch_progress
from slidemill.schemas import SlideResult


def _result(slide_id: str, status: str) -> SlideResult:
    return SlideResult.model_construct(slide_id=slide_id, status=status)


def test_the_bar_counts_every_slide_and_the_failed_ones_and_passes_the_callbacks_on() -> None:
    heard: list[object] = []
    caller = BatchHooks(
        on_start=lambda n, kept: heard.append((n, kept)),
        on_result=lambda r: heard.append(r.slide_id),
    )
    screen = io.StringIO()
    with batch_progress(Console(file=screen, width=100), caller) as hooks:
        assert hooks.on_start is not None and hooks.on_result is not None
        hooks.on_start(3, 1)
        for sid, status in (("kept", "done"), ("bad", "failed"), ("ok", "done")):
            hooks.on_result(_result(sid, status))
    assert heard == [(3, 1), "kept", "bad", "ok"]
    last = screen.getvalue().strip().splitlines()[-1]
    assert "3/3" in last and "1 failed" in last, last


def test_without_a_caller_the_bar_alone_is_drawn() -> None:
    screen = io.StringIO()
    with batch_progress(Console(file=screen, width=100)) as hooks:
        assert hooks.on_start is not None and hooks.on_result is not None
        hooks.on_start(2, 0)
        hooks.on_result(_result("a", "done"))
    assert "1/2" in screen.getvalue() and "0 failed" in screen.getvalue()
