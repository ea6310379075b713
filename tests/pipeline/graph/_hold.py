"""A `dask worker --preload` for the fault tests: it holds one stage at its first call, so that a
test can kill the worker (or let it go on) at exactly that moment.

The folder $SLIDEMILL_TEST_HOLD_DIR is the channel. A file `arm-<stage>` arms a stage
(`plugin`: the model plugin's setup; `plan`, `mil`, `reduce`: those tasks). The first call of
an armed stage in any worker claims it, writes its PID to `held-<stage>` and waits until the
test kills the process or writes `release-<stage>`. Later calls, in this worker or the one a
nanny starts in its place, run normally.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOLD_DIR_ENV = "SLIDEMILL_TEST_HOLD_DIR"
HOLD_LIMIT_S = 120.0


def hold(stage: str) -> None:
    """Hold here if `stage` is armed and not yet claimed."""
    folder = Path(os.environ[HOLD_DIR_ENV])
    if not (folder / f"arm-{stage}").exists():
        return
    try:
        os.close(os.open(folder / f"claim-{stage}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    tmp = folder / f".held-{stage}"
    tmp.write_text(str(os.getpid()))
    tmp.replace(folder / f"held-{stage}")
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (folder / f"release-{stage}").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"stage {stage} held for {HOLD_LIMIT_S:g} s: the test never came")
        time.sleep(0.02)


def _held(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hold(stage)
        return fn(*args, **kwargs)

    return wrapper


def dask_setup(worker: object) -> None:
    """Wrap the stages before the worker takes any task. The plugin arrives as an instance of
    the patched class; a task names its function by the module that defines it, so the
    wrapper goes there."""
    from slidemill.workers import ModelPlugin

    ModelPlugin.setup = _held("plugin", ModelPlugin.setup)  # type: ignore[method-assign]
    for stage, module, name in (
        ("plan", "slidemill.pipeline.graph._plan", "plan_or_refuse"),
        ("mil", "slidemill.pipeline.graph._tasks", "mil_slide"),
        ("reduce", "slidemill.pipeline.graph._tasks", "reduce_slide"),
    ):
        defining = importlib.import_module(module)
        setattr(defining, name, _held(stage, getattr(defining, name)))
