"""A real run of generated slides with a known heatmap written over it, and `slidemill view`
serving it as a real process on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import zarr

from slidemill.schemas.layout import SLIDE_STORE, StoreArray
from slidemill.viewer import CellGrid
from tests.helpers import REPO, StoreView, free_port, slidemill

HIGH, LOW = 0.9, 0.1
SPLIT_X = 1600
"""Level-0 x between the generated slide's two tissue regions: cells left of it are set HIGH."""


@dataclass(frozen=True)
class ViewedRun:
    out: Path
    slide_id: str
    """The slide whose heatmap is known."""
    grid: CellGrid
    values: np.ndarray
    """(rows, cols) P(positive) written into its heatmap."""
    top_tile: int
    """The tile given the highest attention."""


@pytest.fixture(scope="session")
def viewed_run(
    tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, tiny_bundle: Path
) -> ViewedRun:
    """A real `slidemill run` of the two generated slides; then the SVS's tile scores and
    positive heatmap are set to HIGH on the left tissue region and LOW on the right (NaN stays
    NaN off tissue), and one tile gets half the attention, so the tests know what must be drawn
    where."""
    out = tmp_path_factory.mktemp("viewed") / "night-1"
    done = slidemill("run", slides_dir, "--model", tiny_bundle, "--out", out, "--workers", "1")
    assert done.returncode == 0, done.stderr
    slide_id = "synth-svs"
    store = out / slide_id / SLIDE_STORE
    view = StoreView(store)
    attrs = view.attrs
    grid = CellGrid(attrs["tile_size_level0"], attrs["stride_level0"], tuple(attrs["grid_shape"]))
    heat = view[StoreArray.HEATMAP]
    gi = view[StoreArray.GRID_INDEX]
    n = gi.shape[0]
    left = np.array([grid.cell_box(int(r), int(c))[0] < SPLIT_X for r, c in gi])
    positive = np.where(left, HIGH, LOW).astype(np.float32)
    heat[1] = np.nan
    heat[1][gi[:, 0], gi[:, 1]] = positive
    heat[0][gi[:, 0], gi[:, 1]] = 1 - positive
    top = int(np.flatnonzero(~left)[len(np.flatnonzero(~left)) // 2])
    attention = np.full(n, 0.5 / max(n - 1, 1), np.float32)
    attention[top] = 0.5
    for name, data in (
        (StoreArray.HEATMAP, heat),
        (StoreArray.ATTENTION, attention),
        (StoreArray.SCORES, np.stack([1 - positive, positive], axis=1)),
    ):
        zarr.open_array(store=str(store / name), mode="r+")[...] = data
    return ViewedRun(out, slide_id, grid, heat[1], top)


@dataclass
class Viewer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_viewer(
    runs: list[Path], log: Path, *extra: str, env: dict[str, str] | None = None
) -> Viewer:
    """`slidemill view` as a real process; waits (with a deadline) until it answers."""
    port = free_port()
    args = [sys.executable, "-m", "slidemill.cli", "view", *map(str, runs), "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*args, *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    viewer = Viewer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(viewer.url + "/static/viewer.css", timeout=2).status_code == 200:
                return viewer
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            viewer.stop()
            pytest.fail(f"the viewer did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def viewer(viewed_run: ViewedRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    running = start_viewer([viewed_run.out], tmp_path_factory.mktemp("viewer") / "viewer.log")
    yield running
    running.stop()
