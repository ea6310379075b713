"""The direct TIFF decoder gives the pixels OpenSlide gives, and hands OpenSlide what it cannot
decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from slidemill.pipeline.errors import SlideError
from slidemill.pipeline.graph import read_tiles
from slidemill.pipeline.slides import (
    OpenSlideReader,
    SlideReader,
    TiffDirectReader,
    choose_level,
    open_slide,
)
from slidemill.pipeline.tissue import plan_grid

# libjpeg-turbo on both sides; a different IDCT or upsampling setting would show as small
# differences, so allow a little while requiring the same image.
MAX_MEAN_DIFF = 1.0


def _grid_tiles(reader: SlideReader, mpp: float, target: float, tile_px: int) -> np.ndarray:
    """Every whole tile of the slide at `target` µm/px."""
    choice = choose_level(mpp, reader.level_downsamples, target, tile_px)
    w, h = reader.dimensions
    stride0 = tile_px * target / mpp
    grid = plan_grid(np.ones((8, 8), bool), 8 / max(w, h), w, h, choice.tile_level0, stride0, 0)
    return read_tiles(reader, choice, stride0, tile_px, tile_px, grid.rows, grid.cols)


@pytest.mark.parametrize("name", ["synth-svs.svs", "synth-tiff.tiff"])
@pytest.mark.parametrize(("target", "tile_px"), [(0.5, 256), (1.0, 128), (2.0, 64), (1.3, 96)])
def test_direct_and_openslide_tiles_agree(
    slides_dir: Path, name: str, target: float, tile_px: int
) -> None:
    path = slides_dir / name
    direct = open_slide(path)
    assert isinstance(direct, TiffDirectReader)
    assert direct.direct_levels() == list(range(len(direct.level_downsamples)))
    reference = open_slide(path, backend="openslide")
    assert isinstance(reference, OpenSlideReader)
    a = _grid_tiles(direct, 0.5, target, tile_px)
    b = _grid_tiles(reference, 0.5, target, tile_px)
    assert a.shape == b.shape and len(a) > 10
    assert np.abs(a.astype(int) - b.astype(int)).mean() <= MAX_MEAN_DIFF


def test_real_slide_agrees(sample_slide: Path) -> None:
    direct = open_slide(sample_slide)
    assert isinstance(direct, TiffDirectReader)
    reference = open_slide(sample_slide, backend="openslide")
    a = _grid_tiles(direct, 0.499, 0.499, 256)
    b = _grid_tiles(reference, 0.499, 0.499, 256)
    assert len(a) == 88
    assert np.abs(a.astype(int) - b.astype(int)).mean() <= MAX_MEAN_DIFF


def test_regions_off_the_image_are_white(slides_dir: Path) -> None:
    reader = open_slide(slides_dir / "synth-tiff.tiff")
    region = reader.read_region((3000, 2000), 0, (200, 100))
    assert (region[:48, :72] != 255).any()  # the slide's last pixels
    assert (region[48:, :] == 255).all() and (region[:, 72:] == 255).all()


def test_levels_it_cannot_decode_go_to_openslide(slides_dir: Path) -> None:
    path = slides_dir / "synth-tiff.tiff"
    full = TiffDirectReader.try_open(path)
    assert full is not None
    osr = OpenSlideReader(path)
    partial = TiffDirectReader(osr, [full._pages[0], None, None])
    assert partial.direct_levels() == [0]
    np.testing.assert_array_equal(
        partial.read_region((512, 256), 1, (64, 64)), osr.read_region((512, 256), 1, (64, 64))
    )
    # a block at OpenSlide's level is read as strips (a call per run), not a call per tile
    calls: list[tuple[int, int]] = []
    read = osr.read_region

    def counted(location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        calls.append(size)
        return read(location, level, size)

    osr.read_region = counted  # type: ignore[method-assign]
    tiles = _grid_tiles(partial, 0.5, 1.0, 64)  # level 1 is 2× downsampled: no resize
    assert len(tiles) > 2 * len(calls) > 0


def test_other_formats_stay_with_openslide(bad_dir: dict[str, Path]) -> None:
    assert TiffDirectReader.try_open(bad_dir["png"]) is None


def test_truncated_tile_data_is_an_error_naming_the_file(bad_dir: dict[str, Path]) -> None:
    path = bad_dir["truncated"]
    with pytest.raises(SlideError) as info:
        reader = open_slide(path)
        reader.read_region((0, 0), 0, reader.dimensions)
    assert str(path) in str(info.value)


def _stored_side(reader: TiffDirectReader) -> int:
    page = reader._pages[0]
    assert page is not None and page.tilewidth == page.tilelength
    return int(page.tilewidth)


def test_aligned_grid_decodes_stored_tiles_in_place(
    slides_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the grid is the stored tile grid, each tile is decoded straight into the block,
    with the very pixels that copying from decoded stored tiles gives."""
    direct = open_slide(slides_dir / "synth-svs.svs")
    assert isinstance(direct, TiffDirectReader)
    side = _stored_side(direct)
    decodes: list[int] = []
    copies: list[int] = []
    decode, copy = TiffDirectReader._decode_into, TiffDirectReader._copy_tile

    def spy_decode(self: TiffDirectReader, level: int, page: Any, index: int, out: Any) -> None:
        decodes.append(index)
        decode(self, level, page, index, out)

    def spy_copy(self: TiffDirectReader, level: int, page: Any, index: int, *a: Any) -> None:
        copies.append(index)
        copy(self, level, page, index, *a)

    monkeypatch.setattr(TiffDirectReader, "_decode_into", spy_decode)
    monkeypatch.setattr(TiffDirectReader, "_copy_tile", spy_copy)
    a = _grid_tiles(direct, 0.5, 0.5, side)
    assert len(decodes) == len(a) > 10 and not copies
    # tiles that straddle stored tiles are copied from decoded (and cached) stored tiles instead
    b = _grid_tiles(direct, 0.5, 0.5, side - 16)
    assert len(b) > 10 and len(copies) > len(b) and len(decodes) - len(a) < len(copies)
    direct.drop_cache()
    monkeypatch.setattr(TiffDirectReader, "_in_place", staticmethod(lambda page: False))
    assert np.array_equal(a, _grid_tiles(direct, 0.5, 0.5, side))


def test_aligned_decode_of_a_corrupt_tile_names_the_file(slides_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.svs"
    data = bytearray((slides_dir / "synth-svs.svs").read_bytes())
    with tifffile.TiffFile(slides_dir / "synth-svs.svs") as tif:
        offset = tif.pages.first.dataoffsets[5]
    data[offset : offset + 4] = b"\0\0\0\0"  # no JPEG start-of-image marker
    path.write_bytes(bytes(data))
    reader = open_slide(path)
    assert isinstance(reader, TiffDirectReader)
    with pytest.raises(SlideError, match=r"corrupt\.svs: cannot decode stored tile 5 of level 0"):
        _grid_tiles(reader, 0.5, 0.5, _stored_side(reader))


def test_arrays_reused_after_eviction_give_the_same_pixels(
    slides_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evicted decoded tiles take later decodes; with a cache of two tiles nearly every decode
    reuses one, and the pixels must not change."""
    path = slides_dir / "synth-svs.svs"
    reference = _grid_tiles(open_slide(path, backend="openslide"), 0.5, 0.5, 200)
    probe = TiffDirectReader.try_open(path)
    assert probe is not None
    side = _stored_side(probe)
    # the cache is sized when a reader opens
    monkeypatch.setattr("slidemill.pipeline.slides._tiffdirect.CACHE_BYTES", 2 * side * side * 3)
    direct = TiffDirectReader.try_open(path)
    assert direct is not None
    first = _grid_tiles(direct, 0.5, 0.5, 200)
    assert direct._spare, "evicted arrays are kept for reuse"
    direct.drop_cache()
    again = _grid_tiles(direct, 0.5, 0.5, 200)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - reference.astype(int)).mean() <= MAX_MEAN_DIFF
