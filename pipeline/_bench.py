"""`slidemill bench`: slide-to-Zarr tiling against the raw JPEG decode limit and a naive
OpenSlide loop, measured in the same run so the ratios hold on a noisy machine.

All three are single-process and count level-0 megapixels, so slides whose stored tiles differ in
size from slidemill's tiles compare fairly.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import tifffile
from rich.console import Console
from rich.table import Table

from pipeline._readers import READERS, open_slide
from pipeline._store import read_all
from pipeline._tasks import SlideJob, plan_slide, write_tiles
from pipeline._tiling import read_tiles
from schemas import TilingSpec, TissueMethod

SAMPLE_NAME = "CMU-1-Small-Region.svs"


def default_sample() -> Path | None:
    """$SLIDEMILL_SAMPLE_SLIDE, else ../shared/data/ beside the working directory or the repo."""
    env = os.environ.get("SLIDEMILL_SAMPLE_SLIDE")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates += [Path.cwd().parent / "shared" / "data" / SAMPLE_NAME]
    candidates += [repo.parent / "shared" / "data" / SAMPLE_NAME]
    return next((p for p in candidates if p.is_file()), None)


@dataclass(frozen=True, slots=True)
class Rate:
    """One measurement."""

    name: str
    """What was measured."""
    tiles: int
    """Tiles processed."""
    megapixels: float
    """Level-0 megapixels covered."""
    seconds: float
    """Wall time."""

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / self.seconds


def _repeat(budget: float, once: Callable[[], tuple[int, float]]) -> tuple[int, float, float]:
    """Run `once` (returning tiles, megapixels) until `budget` seconds have passed."""
    tiles, mp, t0 = 0, 0.0, time.perf_counter()
    while True:
        n, m = once()
        tiles, mp = tiles + n, mp + m
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            return tiles, mp, elapsed


def raw_decode(path: Path, budget: float) -> Rate:
    """Decode the stored level-0 JPEG tiles from bytes in RAM (tifffile + imagecodecs)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if not page.is_tiled or page.compression != 7:
            raise ValueError(f"{path}: level 0 is not JPEG-tiled; no decode limit to measure")
        fh = tif.filehandle
        blobs = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            fh.seek(offset)
            blobs.append(fh.read(count))
        tile_mp = page.tilewidth * page.tilelength / 1e6
        tables = page.jpegtables

        def once() -> tuple[int, float]:
            for i, blob in enumerate(blobs):
                page.decode(blob, i, jpegtables=tables)
            return len(blobs), len(blobs) * tile_mp

        tiles, mp, secs = _repeat(budget, once)
    return Rate("raw JPEG decode (limit)", tiles, mp, secs)


def naive_openslide(path: Path, tile_px: int, budget: float) -> Rate:
    """One `read_region(...).convert("RGB")` per tile over the level-0 grid, with
    openslide-python alone: what most tiling scripts do."""
    slide = openslide.OpenSlide(str(path))
    w, h = slide.dimensions
    grid = [
        (x, y)
        for y in range(0, h - tile_px + 1, tile_px)
        for x in range(0, w - tile_px + 1, tile_px)
    ]

    def once() -> tuple[int, float]:
        for xy in grid:
            np.asarray(slide.read_region(xy, 0, (tile_px, tile_px)).convert("RGB"))
        return len(grid), len(grid) * tile_px * tile_px / 1e6

    tiles, mp, secs = _repeat(budget, once)
    slide.close()
    return Rate(f"naive OpenSlide read_region {tile_px}px", tiles, mp, secs)


def slidemill_tiling(
    path: Path, tile_px: int, budget: float, workdir: Path, write: bool = True
) -> Rate:
    """slidemill's tiling stage (strip reads, slicing, and with `write` the Zarr write) at the
    slide's own resolution over every tile, tissue or not, in one process."""
    reader = open_slide(path)
    mpp = reader.mpp or 0.5
    job = SlideJob(
        slide_id="bench",
        path=str(path),
        out=str(workdir),
        tiling=TilingSpec(
            mpp=mpp, tile_px=tile_px, tissue_method=TissueMethod.NONE, min_tissue_fraction=0.0
        ),
        fallback_mpp=0.5,
        tiles_per_task=256,
        model_bundle="",
        model_sha256="",
        class_names=("a", "b"),
        feature_dim=1,
        batch_size=1,
    )
    plan = plan_slide(job)
    tile_mp = plan.choice.tile_level0**2 / 1e6

    grid_index = read_all(job.store, "grid_index").astype(np.int64)

    def once() -> tuple[int, float]:
        # a fresh handle each pass: decoded stored tiles must not be served from the last pass
        READERS.evict(path)
        reader = READERS.get(path)
        for start, stop in plan.blocks:
            if write:
                write_tiles(plan, start, stop)
            else:
                rows, cols = grid_index[start:stop, 0], grid_index[start:stop, 1]
                read_tiles(reader, plan.choice, plan.stride_level0, tile_px, tile_px, rows, cols)
        return plan.n_tiles, plan.n_tiles * tile_mp

    tiles, mp, secs = _repeat(budget, once)
    name = f"slidemill tiling → Zarr {tile_px}px" if write else f"slidemill tile reads {tile_px}px"
    return Rate(name, tiles, mp, secs)


def run_bench(path: Path, seconds: float, console: Console) -> list[Rate]:
    """Measure and print; returns the rates (limit, naive, slidemill)."""
    tile_px = 256
    with tempfile.TemporaryDirectory(prefix="slidemill-bench-") as tmp:
        rates = [
            raw_decode(path, seconds),
            naive_openslide(path, tile_px, seconds),
            slidemill_tiling(path, tile_px, seconds, Path(tmp), write=False),
            slidemill_tiling(path, tile_px, seconds, Path(tmp)),
        ]
    limit, naive = rates[0], rates[1]
    table = Table(title=f"{path.name}: one process, level-0 megapixels")
    for col in ("measurement", "tiles/s", "MP/s", "× decode limit", "× naive OpenSlide"):
        table.add_column(col, justify="right" if col != "measurement" else "left")
    for r in rates:
        table.add_row(
            r.name,
            f"{r.tiles_per_s:,.0f}",
            f"{r.mp_per_s:,.1f}",
            f"{r.mp_per_s / limit.mp_per_s:.2f}",
            f"{r.mp_per_s / naive.mp_per_s:.2f}",
        )
    Console(width=max(console.width, 110)).print(table)
    return rates
