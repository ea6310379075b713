"""Helpers shared by the tests: the command line in a subprocess, generated slides, the sample
slide's path, and dask processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from slidemill.pipeline.bench import default_sample
from slidemill.pipeline.synth import Ellipse, SyntheticSlide

REPO = Path(__file__).resolve().parents[1]

# Two tissue regions on a 3072 × 2048 slide at 0.5 µm/px: a test knows where tissue must be.
TISSUE = (Ellipse(900, 1000, 600, 550), Ellipse(2250, 900, 520, 640))


def slidemill(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "slidemill.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def sample_path() -> Path | None:
    """$SLIDEMILL_SAMPLE_SLIDE, else ../shared/data beside the checkout: as `slidemill bench`."""
    return default_sample(REPO.parent / "shared" / "data")


def synthetic(mpp: float | None = 0.5, tissue: tuple[Ellipse, ...] = TISSUE) -> SyntheticSlide:
    return SyntheticSlide(3072, 2048, mpp, tissue, seed=3)


def dask_process(*args: str) -> subprocess.Popen[bytes]:
    """`dask scheduler` / `dask worker` as a real process (`dask_scheduler`, `dask_worker`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli." + args[0], *args[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
