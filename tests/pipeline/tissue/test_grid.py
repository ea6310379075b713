"""Tile-grid planning and tissue fractions (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slidemill.pipeline.tissue import blocks, grid_shape, origin, plan_grid, tile_tissue_fractions


@given(
    extent=st.integers(0, 200_000),
    tile=st.floats(16, 4096),
    overlap=st.floats(0, 0.9),
)
def test_grid_fits_whole_tiles_and_no_more(extent: int, tile: float, overlap: float) -> None:
    stride = tile * (1 - overlap)
    rows, cols = grid_shape(extent, extent, tile, stride)
    assert rows == cols
    if rows:
        last = origin(np.array([rows - 1]), stride)[0]
        assert last + tile <= extent + 1  # rounding of the origin moves it by at most half a px
        assert (rows) * stride + tile > extent  # one more would not fit
    else:
        assert extent < tile


@given(
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    tile=st.floats(8, 200),
    scale=st.floats(0.01, 1.0),
)
def test_uniform_masks_give_uniform_fractions(
    height: int, width: int, tile: float, scale: float
) -> None:
    shape = grid_shape(int(width / scale), int(height / scale), tile, tile)
    full = tile_tissue_fractions(np.ones((height, width), bool), scale, shape, tile, tile)
    empty = tile_tissue_fractions(np.zeros((height, width), bool), scale, shape, tile, tile)
    assert full.shape == shape and np.all(full == 1.0)
    assert np.all(empty == 0.0)


def test_fractions_follow_the_mask() -> None:
    # 10 × 10 mask at 1/16 scale: left half tissue; tiles of 32 level-0 px = 2 mask px
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    mask[0:2, 6:7] = True  # a quarter of tile (0, 3)
    shape = grid_shape(160, 160, 32, 32)
    frac = tile_tissue_fractions(mask, 1 / 16, shape, 32, 32)
    assert shape == (5, 5)
    np.testing.assert_allclose(frac[:, :2], 1.0)
    assert frac[0, 2] == pytest.approx(0.5)  # mask columns 4 (tissue) and 5 (not)
    assert frac[0, 3] == pytest.approx(0.5)
    assert frac[1, 3] == pytest.approx(0.0)
    assert frac[0, 4] == pytest.approx(0.0)


def test_plan_grid_keeps_tiles_over_threshold_in_row_major_order() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:6, 1:7] = True
    grid = plan_grid(mask, 1 / 32, 256, 256, 32, 32, 0.5)
    assert grid.shape == (8, 8)
    assert grid.n_tiles == 24
    order = grid.rows * 8 + grid.cols
    assert np.all(np.diff(order) > 0)
    coords = grid.coords()
    assert coords[0].tolist() == [32, 64]  # x = col 1, y = row 2
    assert np.all(grid.tissue_fraction >= 0.5)


def test_tiles_smaller_than_a_mask_pixel_take_the_pixel_under_their_centre() -> None:
    mask = np.array([[True, False]])
    frac = tile_tissue_fractions(mask, 1 / 100, (1, 8), 25, 25)
    assert frac.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


@given(n=st.integers(0, 5000), per=st.integers(1, 700))
def test_blocks_partition(n: int, per: int) -> None:
    b = blocks(n, per)
    assert sum(stop - start for start, stop in b) == n
    assert all(0 < stop - start <= per for start, stop in b)
    assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
