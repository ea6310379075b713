"""The benchmark command's parts run and measure what they say (no timing assertions: speed is
reported by `slidemill bench`, not tested)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from slidemill.bench import (
    Pass,
    fastest,
    large_slide_geometry,
    pipeline_run,
    raw_decode,
    run_bench,
    single_process,
    write_large_slide,
)
from slidemill.pipeline.slides import open_slide
from slidemill.workers import init_bundle


@pytest.fixture(scope="module")
def small_large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_large_slide(tmp_path_factory.mktemp("bench") / "large.tiff", 3072, 1536)


def test_large_slide_is_a_pyramid_with_the_planned_tissue(small_large: Path) -> None:
    reader = open_slide(small_large)
    assert reader.dimensions == (3072, 1536)
    assert reader.level_downsamples == (1.0, 4.0, 16.0, 64.0)
    assert reader.mpp == pytest.approx(0.5)
    geometry = large_slide_geometry(3072, 1536)
    for x, y in ((614, 768), (100, 100)):  # centre of the first section; glass in the corner
        pixel = reader.read_region((x, y), 0, (1, 1))[0, 0].astype(int)
        assert (np.ptp(pixel) > 40) == bool(geometry.tissue_at(np.array(x), np.array(y)))
    # written once: a second call keeps the file
    mtime = small_large.stat().st_mtime_ns
    write_large_slide(small_large, 3072, 1536)
    assert small_large.stat().st_mtime_ns == mtime


def test_single_process_figures(small_large: Path, tmp_path: Path) -> None:
    figures = single_process(small_large, 0.2, tmp_path)
    rates = figures.rows()
    # its 256-px stored tiles line up with the 256-px grid: tiling keeps the JPEG, and the decode
    # it hands to the encoder is measured; then both again with tiles decoded at tiling time
    names = ["raw", "naive", "slidemill", "slidemill", "its", "slidemill", "its"]
    assert [r.name.split()[0] for r in rates] == names
    assert "(stored JPEG kept)" in figures.tiling.name and "kept JPEG" in figures.read_back.name
    assert figures.decoded is not None and "(decoded, RGB)" in figures.decoded[0].name
    assert "RGB read" in figures.decoded[1].name
    # interleaved rounds until each measurement had its budget: all ran the same passes
    assert all(r.tiles > 0 and r.seconds > 0 for r in rates)
    assert len({r.passes for r in rates}) == 1 and rates[0].passes * 1.0 >= 1
    # the limit decodes every stored level-0 tile of the slide per pass
    with ExitStack() as stack:
        tiles, megapixels = raw_decode(small_large, stack).once()
    assert tiles == 12 * 6 and megapixels == pytest.approx(tiles * 0.065536)


def test_fastest_interleaves_rounds_and_keeps_each_fastest_pass() -> None:
    now = [0.0]
    order: list[str] = []
    durations = {"a": iter([3.0, 1.0, 2.0]), "b": iter([1.0, 2.0, 1.5])}

    def timed(name: str, tiles: int) -> Pass:
        def once() -> tuple[int, float]:
            order.append(name)
            now[0] += next(durations[name])
            return tiles, tiles / 10

        return Pass(name, once)

    a, b = fastest([timed("a", 10), timed("b", 20)], budget=4.5, clock=lambda: now[0])
    # b has run 3 s after two rounds: a third round, for both
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert a.passes == b.passes == 3
    assert (a.seconds, b.seconds) == (1.0, 1.0)
    assert (a.tiles, a.mp_per_s, b.mp_per_s) == (10, 1.0, 2.0)


def test_pipeline_run_reports_tiles_and_worker_memory(small_large: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "m"
    init_bundle(bundle, encoder="tiny_cnn", tile_px=64, mpp=2.0)
    run = pipeline_run(small_large, bundle, 1, tmp_path)
    assert run.tiles > 10 and run.seconds > 0
    assert run.peak_rss_mib >= run.baseline_rss_mib > 100


def test_bench_command_prints_its_tables(small_large: Path, sample_slide: Path) -> None:
    console = Console(record=True, width=140)
    run_bench(
        sample_slide, 0.1, console, workdir=small_large.parent, large_size=None, pipeline=False
    )
    text = console.export_text()
    assert "CMU-1-Small-Region.svs: one process" in text
    assert (
        text.count("× the decode limit (target ≥ 0.5)") == 1 and "raw JPEG decode (limit)" in text
    )
    # 240-px stored tiles under a 256-px grid: kept as a mosaic of stored tiles, its decode
    # counted, and compared with decoding at tiling time
    assert "tiling → Zarr 256px (stored JPEG kept)" in text and "Zarr 256px (decoded" in text
    assert text.count("tiling plus the encoder side's read-back") == 1
    assert "decoded at tiling time (--decode-tiles)" in text
