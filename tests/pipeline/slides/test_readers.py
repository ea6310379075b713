"""The OpenSlide reader: opening, resolution, bad files, strip tiling against per-tile reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidemill.pipeline.errors import (
    MissingSlideError,
    SlideError,
    UnreadableSlideError,
    UnsupportedSlideError,
)
from slidemill.pipeline.graph import read_tiles, runs
from slidemill.pipeline.slides import (
    ReaderCache,
    SlideReader,
    choose_level,
    open_slide,
    read_thumbnail,
    to_rgb,
)
from slidemill.pipeline.tissue import origin, plan_grid


def test_generated_slides_open_with_their_pyramid_and_mpp(slides_dir: Path) -> None:
    svs = open_slide(slides_dir / "synth-svs.svs")
    tiff = open_slide(slides_dir / "synth-tiff.tiff")
    assert isinstance(svs, SlideReader)
    assert svs.dimensions == tiff.dimensions == (3072, 2048)
    assert svs.level_downsamples == (1.0, 4.0)
    assert tiff.level_downsamples == (1.0, 2.0, 8.0)
    assert svs.mpp == pytest.approx(0.5) and tiff.mpp == pytest.approx(0.5)


def test_real_slide(sample_slide: Path) -> None:
    reader = open_slide(sample_slide)
    assert reader.dimensions == (2220, 2967)
    assert reader.mpp == pytest.approx(0.499, abs=1e-3)


def test_readers_expose_no_associated_images(sample_slide: Path) -> None:
    # label and macro can carry patient identifiers: the reader API has no way to reach them
    reader = open_slide(sample_slide)
    assert not any("associated" in name or "label" in name for name in dir(reader))


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("missing", MissingSlideError),
        ("empty", UnreadableSlideError),
        ("png", UnsupportedSlideError),
        ("plain_tiff", UnsupportedSlideError),
    ],
)
def test_bad_files_raise_typed_errors_naming_the_file(
    bad_dir: dict[str, Path], kind: str, error: type[SlideError]
) -> None:
    with pytest.raises(error) as info:
        open_slide(bad_dir[kind])
    message = str(info.value)
    assert str(bad_dir[kind]) in message and "\n" not in message


def test_truncated_slide_fails_to_open_or_to_read(bad_dir: dict[str, Path]) -> None:
    path = bad_dir["truncated"]
    with pytest.raises(SlideError) as info:
        reader = open_slide(path)
        reader.read_region((0, 0), 0, reader.dimensions)
    assert str(path) in str(info.value)


def test_transparent_pixels_become_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[1, 1] = (100, 100, 100, 128)
    rgb = to_rgb(Image.fromarray(rgba, mode="RGBA"))
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 1].tolist() == [177, 177, 177]


def test_thumbnail_has_the_requested_resolution(slides_dir: Path) -> None:
    reader = open_slide(slides_dir / "synth-tiff.tiff")
    thumb = read_thumbnail(reader, 0.5, 8.0)
    assert thumb.shape == (128, 192, 3)


def test_runs_split_rows_and_gaps() -> None:
    rows = np.array([0, 0, 0, 1, 1, 1])
    cols = np.array([1, 2, 4, 0, 1, 2])
    got = [(r.row, r.col, r.length, r.offset) for r in runs(rows, cols, max_run=2)]
    assert got == [(0, 1, 2, 0), (0, 4, 1, 2), (1, 0, 2, 3), (1, 2, 1, 5)]


@pytest.mark.parametrize(("target_mpp", "overlap"), [(0.5, 0), (2.0, 0), (1.3, 16)])
def test_strip_reads_equal_per_tile_reads(
    slides_dir: Path, target_mpp: float, overlap: int
) -> None:
    """Reading a run of tiles as one strip and slicing it gives the tiles a per-tile
    read_region + resize gives (exactly at the native level; within resampling error else)."""
    reader = open_slide(slides_dir / "synth-tiff.tiff")
    tile_px, stride_px = 64, 64 - overlap
    choice = choose_level(0.5, reader.level_downsamples, target_mpp, tile_px)
    stride0 = stride_px * target_mpp / 0.5
    mask = np.ones((16, 24), bool)
    grid = plan_grid(mask, 16 / 2048, 3072, 2048, choice.tile_level0, stride0, 0.5)
    pick = slice(0, 40)
    tiles = read_tiles(
        reader, choice, stride0, tile_px, stride_px, grid.rows[pick], grid.cols[pick]
    )
    ds = choice.level_downsample
    size = round(choice.tile_level0 / ds)
    for i in (0, 7, 39):
        x = int(origin(grid.cols[i : i + 1], stride0)[0])
        y = int(origin(grid.rows[i : i + 1], stride0)[0])
        ref = reader.read_region((x, y), choice.level, (size, size))
        if size != tile_px:
            ref = np.asarray(
                Image.fromarray(ref).resize((tile_px, tile_px), Image.Resampling.BILINEAR)
            )
        diff = np.abs(tiles[i].astype(int) - ref.astype(int))
        if size == tile_px and overlap == 0:
            assert diff.max() == 0
        else:
            assert diff.mean() < 4.0  # resampling a strip vs a tile differs only at edges


def test_a_handle_pushed_out_of_the_cache_stays_open_until_its_lease_ends(
    slides_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    real_close = {}

    def tracking(path: Path) -> SlideReader:
        reader = open_slide(path)
        real_close[path.name] = reader.close
        monkeypatch.setattr(reader, "close", lambda: closed.append(path.name))
        return reader

    monkeypatch.setattr("slidemill.pipeline.slides._readers.open_slide", tracking)
    cache = ReaderCache(capacity=1)
    first, second = sorted(slides_dir.iterdir())
    with cache.lease(first) as held:
        with cache.lease(second):
            pass  # `first` is now out of the cache, but still leased
        cache.evict(first)
        assert closed == []
        assert held.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)
    assert closed == [first.name]  # closed when its last lease ended
    with cache.lease(first):
        pass  # reopened: the retired handle is not handed out again
    assert closed == [first.name, second.name]
    for close in real_close.values():
        close()
