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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import openslide
import tifffile
from rich.console import Console
from rich.table import Table

from pipeline._readers import READERS
from pipeline._store import STORE_NAME, read_all, read_attrs, read_tile_pixels, work_dir
from pipeline._tasks import SlideJob, plan_slide, write_tiles
from pipeline._tiling import read_tiles
from schemas import RunSpec, TilingSpec, TissueMethod

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
    mpp = READERS.get(path).mpp or 0.5
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
        # decoded stored tiles must not be served from the last pass; the handle stays open, as
        # it does on a worker between blocks
        reader = READERS.get(path)
        drop = getattr(reader, "drop_cache", None)
        if drop is not None:
            drop()
        else:
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
    if not write:
        return Rate(f"slidemill tile reads {tile_px}px", tiles, mp, secs)
    kept = " (stored JPEG kept)" if plan.jpeg is not None else ""
    return Rate(f"slidemill tiling → Zarr {tile_px}px{kept}", tiles, mp, secs)


def kept_jpeg_decode(workdir: Path, budget: float) -> Rate | None:
    """Where tiling kept the stored JPEG streams, the decode it left to the encoder side:
    reading the tiles back from the store as RGB (None when the store holds RGB already)."""
    store = work_dir(workdir, "bench") / STORE_NAME  # `slidemill_tiling`'s store
    if not (store / "tile_jpeg").exists():
        return None
    n = len(read_all(store, "grid_index"))
    attrs = read_attrs(store)
    tile_mp = attrs.tile_size_level0**2 / 1e6

    buffer = None  # reused between blocks, as `encode_block` does

    def once() -> tuple[int, float]:
        nonlocal buffer
        for start in range(0, n, 256):
            buffer = read_tile_pixels(store, start, min(n, start + 256), "bench", buffer)
        return n, n * tile_mp

    tiles, mp, secs = _repeat(budget, once)
    return Rate("decode of the kept tiles (encoder side)", tiles, mp, secs)


def _rates_table(title: str, rates: list[Rate]) -> Table:
    limit, naive = rates[0], rates[1]
    table = Table(title=title)
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
    return table


@dataclass(frozen=True, slots=True)
class TilingFigures:
    """One slide's single-process measurements."""

    limit: Rate
    """Raw decode of the stored level-0 JPEG tiles."""
    naive: Rate
    """A `read_region` per 256-px tile."""
    reads: Rate
    """slidemill's 256-px tile reads, no writing."""
    tiling: Rate
    """slidemill's 256-px tiling into Zarr."""
    handed_on: Rate | None
    """The decode of kept JPEG tiles left to the encoder, when `tiling` kept them."""
    stored_size: tuple[Rate, Rate | None] | None = None
    """Tiling and the decode it handed on at the slide's stored tile size, when not 256 px."""

    def rows(self) -> list[Rate]:
        rows = [self.limit, self.naive, self.reads, self.tiling]
        rows += [self.handed_on] if self.handed_on is not None else []
        if self.stored_size is not None:
            rows += [r for r in self.stored_size if r is not None]
        return rows


def _with_decode(tiling: Rate, decode: Rate | None) -> float:
    """MP/s of tiling followed by the decode it handed on (tiling's own rate when none)."""
    if decode is None:
        return tiling.mp_per_s
    return 1 / (1 / tiling.mp_per_s + 1 / decode.mp_per_s)


def _stored_tile_px(path: Path) -> int | None:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        return int(page.tilewidth) if page.is_tiled and page.tilewidth == page.tilelength else None


def single_process(path: Path, seconds: float, workdir: Path) -> TilingFigures:
    """Limit, naive loop, slidemill reads, slidemill tiling into Zarr: one process each; and
    tiling at the slide's stored tile size where that differs from 256 px."""
    tile_px = 256
    with tempfile.TemporaryDirectory(prefix="tiling-", dir=workdir) as tmp:
        figures = TilingFigures(
            limit=raw_decode(path, seconds),
            naive=naive_openslide(path, tile_px, seconds),
            reads=slidemill_tiling(path, tile_px, seconds, Path(tmp), write=False),
            tiling=slidemill_tiling(path, tile_px, seconds, Path(tmp)),
            handed_on=kept_jpeg_decode(Path(tmp), seconds),
        )
    stored = _stored_tile_px(path)
    if stored is None or stored == tile_px:
        return figures
    with tempfile.TemporaryDirectory(prefix="tiling-", dir=workdir) as tmp:
        at_stored = slidemill_tiling(path, stored, seconds, Path(tmp))
        return replace(figures, stored_size=(at_stored, kept_jpeg_decode(Path(tmp), seconds)))


def run_bench(
    path: Path,
    seconds: float,
    console: Console,
    *,
    workdir: Path,
    large_size: tuple[int, int] | None = (50_000, 20_000),
    pipeline: bool = True,
) -> None:
    """Measure and print (on `console`) everything `slidemill bench` reports."""
    from pipeline._benchrun import PipelineRun, pipeline_run
    from pipeline._benchslide import write_large_slide
    from workers import init_bundle

    out = console
    workdir.mkdir(parents=True, exist_ok=True)
    slides = [path]
    if large_size is not None:
        w, h = large_size
        large = workdir / f"large-{w}x{h}.tiff"
        if not large.exists():
            console.print(f"generating {large} ({w * h / 1e9:.2f} gigapixel, once)…")
        slides.append(write_large_slide(large, w, h))
    limits: dict[str, Rate] = {}
    for slide in slides:
        fig = single_process(slide, seconds, workdir)
        limits[slide.name] = fig.limit
        out.print(_rates_table(f"{slide.name}: one process, level-0 megapixels", fig.rows()))
        limit, naive = fig.limit.mp_per_s, fig.naive.mp_per_s
        out.print(
            f"  tiling → Zarr: {fig.tiling.mp_per_s / limit:.2f} × the decode limit "
            f"(target ≥ 0.5), {fig.tiling.mp_per_s / naive:.2f} × the naive loop (target ≥ 3)"
        )
        if fig.handed_on is not None:  # tiling kept the JPEG: count the decode it handed on
            both = _with_decode(fig.tiling, fig.handed_on)
            out.print(
                f"  tiling plus the encoder side's decode: {both / limit:.2f} × the decode "
                f"limit, {both / naive:.2f} × the naive loop"
            )
        if fig.stored_size is not None:
            both = _with_decode(*fig.stored_size)
            out.print(
                f"  at the stored tile size, tiling plus any decode handed on: "
                f"{both / limit:.2f} × the decode limit, {both / naive:.2f} × the naive loop"
            )
    if not pipeline:
        return
    bundle = workdir / "tiny-256"
    if not bundle.exists():
        init_bundle(bundle, encoder="tiny_cnn", tile_px=256, mpp=0.5, seed=0)
    runs: list[PipelineRun] = [
        pipeline_run(slide, bundle, n, workdir) for slide in slides for n in (1, 2)
    ]
    table = Table(title="whole pipeline (tiny encoder, 256 px at 0.5 µm/px), LocalCluster")
    for col in ("slide", "workers", "tiles", "s", "tiles/s", "× decode limit/core",
                "peak RSS/worker MiB", "idle RSS MiB"):  # fmt: skip
        table.add_column(col, justify="left" if col == "slide" else "right")
    for r in runs:
        limit = limits[r.slide].mp_per_s * r.workers
        table.add_row(
            r.slide, str(r.workers), f"{r.tiles:,}", f"{r.seconds:.1f}",
            f"{r.tiles / r.seconds:,.0f}", f"{r.megapixels / r.seconds / limit:.2f}",
            f"{r.peak_rss_mib:,.0f}", f"{r.baseline_rss_mib:,.0f}",
        )  # fmt: skip
    out.print(table)
    by = {(r.slide, r.workers): r for r in runs}
    for slide in slides:
        one, two = by[(slide.name, 1)], by[(slide.name, 2)]
        # a slide of one tile block is one task per stage: a second worker has nothing to take
        per_task = RunSpec.model_fields["tiles_per_task"].default  # what the runs used
        target = "target ≥ 1.7" if one.tiles > per_task else "one block: nothing to share"
        out.print(
            f"  {slide.name}: 2 workers = {one.seconds / two.seconds:.2f} × 1 worker ({target})"
        )
    if len(slides) == 2:
        small = max(by[(slides[0].name, n)].peak_rss_mib for n in (1, 2))
        big = max(by[(slides[1].name, n)].peak_rss_mib for n in (1, 2))
        out.print(f"  peak worker memory, large / sample slide: {big / small:.2f} (target ≤ 1.5)")
