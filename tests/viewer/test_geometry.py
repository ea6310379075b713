"""The viewer's pure arithmetic: the pyramid, where heatmap cells lie, heatmap tile pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slidemill.pipeline.tissue import plan_grid
from slidemill.viewer import (
    CellGrid,
    Pyramid,
    attention_values,
    colormap_lut,
    heat_tile,
    index_grid,
    top_k,
)


@given(st.integers(1, 200_000), st.integers(1, 200_000))
def test_the_pyramid_halves_like_openseadragon_down_to_one_pixel(width: int, height: int) -> None:
    p = Pyramid(width, height, 256)
    assert p.level_size(p.max_level) == (width, height)
    assert p.level_size(0) == (1, 1)
    for level in range(1, p.max_level + 1):
        w, h = p.level_size(level)
        assert p.level_size(level - 1) == (math.ceil(w / 2), math.ceil(h / 2))


def test_tiles_outside_a_level_do_not_exist() -> None:
    p = Pyramid(1000, 600, 256)
    assert p.tile_box(p.max_level, 3, 2) == (768, 512, 232, 88)
    assert p.tile_box(p.max_level, 4, 0) is None
    assert p.tile_box(p.max_level + 1, 0, 0) is None
    assert p.tile_box(0, 0, 0) == (0, 0, 1, 1)


@given(
    st.floats(16, 2000),
    st.floats(0.3, 1.0),
    st.integers(1, 40),
    st.integers(1, 40),
)
def test_each_cell_is_the_centre_of_its_tile_and_cells_tile_the_grid(
    tile: float, stride_ratio: float, rows: int, cols: int
) -> None:
    grid = CellGrid(tile, tile * stride_ratio, (rows, cols))
    r, c = rows - 1, cols - 1
    x, y, w, h = grid.cell_box(r, c)
    tx, ty, edge = grid.tile_box(r, c)
    # the cell sits in the middle of its tile, within the origin's rounding
    assert abs((x + w / 2) - (tx + edge / 2)) <= 1.0
    assert abs((y + h / 2) - (ty + edge / 2)) <= 1.0
    # a point at a cell's centre finds that cell; the cells leave no gaps
    rr, cc, inside = grid.cells_at(np.array([x + w / 2]), np.array([y + h / 2]))
    assert inside[0] and (rr[0], cc[0]) == (r, c)
    edges = grid.edges(cols)
    assert np.all(np.diff(edges) > 0)


def test_without_overlap_a_cell_is_exactly_its_tile_as_the_planner_places_it() -> None:
    mask = np.ones((64, 96), bool)
    planned = plan_grid(mask, 1 / 32, 3072, 2048, 512.7, 512.7, 0.5)
    grid = CellGrid(planned.tile_level0, planned.stride_level0, planned.shape)
    coords = planned.coords()
    for i in range(planned.n_tiles):
        x, y, _, _ = grid.cell_box(int(planned.rows[i]), int(planned.cols[i]))
        assert (x, y) == (coords[i, 0], coords[i, 1])


def test_a_heat_tile_colours_known_values_and_hides_nan_and_values_under_the_threshold() -> None:
    values = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    grid = CellGrid(100.0, 100.0, (2, 2))  # a 200 × 200 level-0 slide of four cells
    pyramid = Pyramid(200, 200, 256)
    lut = colormap_lut("viridis")
    rgba = heat_tile(values, grid, pyramid, pyramid.max_level, (0, 0, 200, 200), lut)
    assert rgba.shape == (200, 200, 4)
    assert tuple(rgba[50, 50]) == (*lut[0], 255)
    assert tuple(rgba[50, 150]) == (*lut[128], 255)
    assert tuple(rgba[150, 50]) == (*lut[255], 255)
    assert tuple(rgba[150, 150]) == (0, 0, 0, 0)
    # cells end where their tiles end
    assert tuple(rgba[99, 99]) == (*lut[0], 255) and tuple(rgba[100, 100]) == (0, 0, 0, 0)
    cut = heat_tile(values, grid, pyramid, pyramid.max_level, (0, 0, 200, 200), lut, 0.6)
    assert cut[50, 50, 3] == 0 and cut[50, 150, 3] == 0 and cut[150, 50, 3] == 255


@pytest.mark.parametrize("levels_down", [0, 2, 4])
def test_a_heat_tile_lies_on_level_0_at_every_zoom(levels_down: int) -> None:
    """Each cell's colour appears where its level-0 box is, whatever the zoom (slideflow#440)."""
    rng = np.random.default_rng(0)
    grid = CellGrid(256.5, 256.5, (11, 9))
    values = rng.random((11, 9)).astype(np.float32)
    values[rng.random((11, 9)) < 0.3] = np.nan
    width, height = 2309, 2967  # the grid stops short of the right and bottom edges
    pyramid = Pyramid(width, height, 256)
    level = pyramid.max_level - levels_down
    lw, lh = pyramid.level_size(level)
    lut = colormap_lut("inferno")
    whole = heat_tile(values, grid, pyramid, level, (0, 0, lw, lh), lut)
    d = pyramid.downsample(level)
    for r in range(11):
        for c in range(9):
            x, y, w, h = grid.cell_box(r, c)
            px, py = int((x + w / 2) / d), int((y + h / 2) / d)
            if np.isnan(values[r, c]):
                assert whole[py, px, 3] == 0
            else:
                assert tuple(whole[py, px, :3]) == tuple(lut[int(values[r, c] * 255 + 0.5)])
    # nothing is drawn beyond the grid
    right = int(grid.edges(9)[-1] / d) + 1
    assert not whole[:, right:, 3].any()


def test_attention_is_scaled_to_the_slide_maximum_and_index_grid_inverts_grid_index() -> None:
    grid_index = np.array([[0, 1], [2, 0], [1, 1]])
    att = np.array([0.2, 0.5, 0.3], np.float32)
    values = attention_values(att, grid_index, (3, 2))
    assert values[2, 0] == 1.0 and values[0, 1] == pytest.approx(0.4)
    assert np.isnan(values[0, 0])
    idx = index_grid(grid_index, (3, 2))
    assert idx[1, 1] == 2 and idx[0, 0] == -1


def test_top_k_skips_nan_and_breaks_ties_by_index() -> None:
    v = np.array([0.1, np.nan, 0.9, 0.9, 0.5])
    assert list(top_k(v, 3)) == [2, 3, 4]
    assert list(top_k(v, 10)) == [2, 3, 4, 0]


def test_an_unknown_colormap_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown colormap"):
        colormap_lut("jet; rm -rf")
