"""`slidemill bench-viewer`: what panning costs. A real `slidemill view` process serves real run
folders; a client pans across each slide's tissue at full resolution as a browser does (six
requests at a time, every slide and heatmap tile of each view), then pans the same path again.
It times each tile, uncached then cached, and samples the viewer's resident memory throughout."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

from slidemill.schemas.layout import MANIFEST_JSON, RESULTS_CSV
from slidemill.viewer import DZ_TILE, FolderCatalog, Pyramid, ViewerError, load_slide, slide_rows

VIEW_PX = (1600, 1000)
"""The browser window the client pans: its tiles are what one view asks for."""
CONNECTIONS = 6
"""Requests in flight at once: what a browser allows per host over HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Latencies:
    """Per-request times of one kind of tile, in milliseconds."""

    uncached: tuple[float, ...]
    """First request of each tile."""
    cached: tuple[float, ...]
    """The same tiles asked again."""

    @staticmethod
    def p(values: tuple[float, ...], q: float) -> float:
        """The q-quantile (0..1) of `values`."""
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@dataclass(frozen=True, slots=True)
class PanReport:
    """One slide panned."""

    slide_id: str
    gigapixels: float
    """Level-0 width × height."""
    views: int
    """Views of the pan path (each asked twice: uncached, then cached)."""
    slide_tiles: Latencies
    heatmap_tiles: Latencies
    rss_start_mib: float
    """The viewer's resident memory before the pan."""
    rss_peak_mib: float
    """Its highest sample during the pan."""


def pan_benchmark(runs: Sequence[Path], work: Path, views: int = 30) -> list[PanReport]:
    """Serve `runs` with `slidemill view` (its log in `work`) and pan every done slide of
    them."""
    from slidemill.bench._served import served

    catalog = FolderCatalog(runs)
    view = ["view", *map(str, runs)]
    reports = []
    with (
        served(view, "/api/runs", work / "viewer.log", error=ViewerError) as server,
        httpx.Client(
            base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=8)
        ) as client,
    ):
        for ref in catalog.runs():
            for row in slide_rows(ref.path)[1]:
                if row.viewable and row.status == "done":
                    pid = server.proc.pid
                    reports.append(_pan(client, pid, ref.key, ref.path, row.slide_id, views))
    return reports


def _pan(
    client: httpx.Client, pid: int, run_key: str, run: Path, slide_id: str, views: int
) -> PanReport:
    data = load_slide(run, slide_id)
    width, height = data.attrs.slide_dimensions
    base = f"/api/runs/{run_key}/slides/{slide_id}"
    layer = data.attrs.class_names[-1] if data.attrs.class_names else "attention"
    slide_pyr = Pyramid(width, height, DZ_TILE)
    heat_pyr = Pyramid(width, height, 256)
    # the path: views centred on tissue tiles spread along the slide, at full resolution
    order = np.argsort(data.grid_index[:, 0] * 1_000_000 + data.grid_index[:, 1])
    picks = order[np.linspace(0, len(order) - 1, min(views, len(order))).astype(int)]
    paths: list[tuple[str, str]] = []
    for index in picks:
        row, col = (int(v) for v in data.grid_index[index])
        x, y, edge = data.grid.tile_box(row, col)
        cx, cy = x + edge / 2, y + edge / 2
        for kind, pyr, suffix in (("slide", slide_pyr, "jpeg"), ("heat", heat_pyr, "png")):
            level = pyr.max_level
            for tx, ty in _tiles_in_view(pyr, cx, cy):
                where = (
                    f"{base}/slide_files/{level}/{tx}_{ty}.{suffix}"
                    if kind == "slide"
                    else f"{base}/heatmap/{layer}/{level}/{tx}_{ty}.{suffix}"
                )
                paths.append((kind, where))
    unique = list(dict.fromkeys(paths))  # a tile shared by two views is asked once per pass
    rss = _RssSampler(pid)
    start = rss.sample()
    rss.start()
    try:
        first = _fetch_all(client, unique)
        again = _fetch_all(client, unique)
    finally:
        rss.stop()
    return PanReport(
        slide_id=slide_id,
        gigapixels=width * height / 1e9,
        views=len(picks),
        slide_tiles=Latencies(first["slide"], again["slide"]),
        heatmap_tiles=Latencies(first["heat"], again["heat"]),
        rss_start_mib=start,
        rss_peak_mib=max(rss.peak, start),
    )


def _tiles_in_view(pyramid: Pyramid, cx: float, cy: float) -> list[tuple[int, int]]:
    """Tiles of the full-resolution level that a VIEW_PX window centred on (cx, cy) shows."""
    lw, lh = pyramid.level_size(pyramid.max_level)
    x0 = max(0, int(cx - VIEW_PX[0] / 2))
    y0 = max(0, int(cy - VIEW_PX[1] / 2))
    x1 = min(lw - 1, int(cx + VIEW_PX[0] / 2))
    y1 = min(lh - 1, int(cy + VIEW_PX[1] / 2))
    t = pyramid.tile_size
    return [(tx, ty) for ty in range(y0 // t, y1 // t + 1) for tx in range(x0 // t, x1 // t + 1)]


def _fetch_all(client: httpx.Client, paths: list[tuple[str, str]]) -> dict[str, tuple[float, ...]]:
    def one(item: tuple[str, str]) -> tuple[str, float]:
        kind, path = item
        t0 = time.perf_counter()
        response = client.get(path)
        ms = (time.perf_counter() - t0) * 1000
        if response.status_code != 200:
            raise ViewerError(f"{path}: HTTP {response.status_code} during the benchmark")
        return kind, ms

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        timed = list(pool.map(one, paths))
    return {k: tuple(ms for kind, ms in timed if kind == k) for k in ("slide", "heat")}


class _RssSampler(threading.Thread):
    """The viewer's resident memory, every 50 ms, from outside its process."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._process = psutil.Process(pid)
        self._stop_event = threading.Event()
        self.peak = 0.0

    def sample(self) -> float:
        return float(self._process.memory_info().rss) / 2**20

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def viewer_benchmark(
    slides: Sequence[Path], work: Path, views: int = 30, on_step: Callable[[str], None] = print
) -> list[PanReport]:
    """Run each slide once with a tiny model (kept in `work` and reused), then pan them all in
    one viewer. The benchmark is of the viewer: the runs only give it something to show."""
    from slidemill.pipeline.graph import run_batch
    from slidemill.schemas import RunSpec
    from slidemill.workers import init_bundle

    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "model"
    if not (bundle / MANIFEST_JSON).is_file():
        init_bundle(bundle, encoder="tiny_cnn", tile_px=64, mpp=2.0, seed=0)
    runs = []
    for slide in slides:
        out = work / "runs" / slide.stem
        if not (out / RESULTS_CSV).is_file():
            on_step(f"running {slide.name} once, to have a heatmap to show…")
            report = run_batch(RunSpec(slides=(slide,), model=bundle, out=out))
            failed = [r for r in report.results if r.status != "done"]
            if failed:
                raise ViewerError(f"benchmark run of {slide.name} failed: {failed[0].error}")
        runs.append(out)
    on_step(f"panning {len(runs)} slide(s), {views} views each, uncached then cached…")
    return pan_benchmark(runs, work, views)
