"""Pure arithmetic of the viewer: the DeepZoom pyramid, where each heatmap cell lies in level 0,
heatmap tiles as RGBA pixels, and the tile under a point. No I/O; tested without a server."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib
import numpy as np
from numpy.typing import NDArray

COLORMAPS: tuple[str, ...] = ("inferno", "viridis", "magma", "turbo", "coolwarm", "RdYlBu_r")
"""The colormaps the viewer offers (matplotlib's, perceptually uniform ones first)."""


@dataclass(frozen=True, slots=True)
class Pyramid:
    """A DeepZoom pyramid over a level-0 image: level `max_level` is level 0, each level below
    halves it (rounding up), down to 1 × 1. The same rule as OpenSeadragon and openslide's
    `DeepZoomGenerator`, so two layers of the same size lie on each other at every zoom."""

    width: int
    """Level-0 width in pixels."""
    height: int
    """Level-0 height in pixels."""
    tile_size: int
    """Tile edge in pixels of its own level (no overlap)."""

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    def downsample(self, level: int) -> int:
        """Level-0 pixels per pixel of `level`."""
        return 2 ** (self.max_level - level)

    def level_size(self, level: int) -> tuple[int, int]:
        d = self.downsample(level)
        return max(1, -(-self.width // d)), max(1, -(-self.height // d))

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of tile (col, row) in `level`'s pixels, or None when it is outside."""
        if not 0 <= level <= self.max_level or col < 0 or row < 0:
            return None
        lw, lh = self.level_size(level)
        x, y = col * self.tile_size, row * self.tile_size
        if x >= lw or y >= lh:
            return None
        return x, y, min(self.tile_size, lw - x), min(self.tile_size, lh - y)


@dataclass(frozen=True, slots=True)
class CellGrid:
    """Where the heatmap's grid cells lie in level 0.

    Tile (row, col) covers level-0 [origin(col), origin(col) + tile) (`pipeline.tissue` rounds
    each origin once). Neighbouring tiles overlap when the stride is shorter than the tile, so a
    cell is drawn over its tile's central stride-wide square: the part of the slide nearest that
    tile's centre. Without overlap that is the tile itself. (The OME-Zarr and GeoJSON exports lay
    cells unrounded, c × stride, as NGFF needs one scale per level: `pipeline.export`'s
    `CellGeometry`; the two agree within half a level-0 pixel.)"""

    tile_level0: float
    """Tile edge in level-0 pixels."""
    stride_level0: float
    """Distance between neighbouring tile origins in level-0 pixels."""
    shape: tuple[int, int]
    """Grid rows, columns."""

    @property
    def inset(self) -> float:
        """Level-0 distance from a tile's origin to its cell's."""
        return (self.tile_level0 - self.stride_level0) / 2

    def edges(self, n: int) -> NDArray[np.float64]:
        """Level-0 edges of `n` cells along one axis: cell i spans [edges[i], edges[i + 1])."""
        index = np.arange(n + 1, dtype=np.float64)
        return np.floor(index * self.stride_level0 + 0.5) + self.inset

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 (x, y, w, h) of cell (row, col)."""
        xs = self.edges(col + 1)
        ys = self.edges(row + 1)
        return (
            float(xs[col]),
            float(ys[row]),
            float(xs[col + 1] - xs[col]),
            float(ys[row + 1] - ys[row]),
        )

    def cells_at(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        """Row and column of the cell under each level-0 point, and whether it is on the grid."""
        rows, cols = self.shape
        r = np.searchsorted(self.edges(rows), y, side="right") - 1
        c = np.searchsorted(self.edges(cols), x, side="right") - 1
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        return np.clip(r, 0, max(rows - 1, 0)), np.clip(c, 0, max(cols - 1, 0)), inside

    def tile_box(self, row: int, col: int) -> tuple[int, int, float]:
        """Level-0 (x, y, edge) of tile (row, col) itself (what the model saw)."""
        x = math.floor(col * self.stride_level0 + 0.5)
        y = math.floor(row * self.stride_level0 + 0.5)
        return x, y, self.tile_level0


def colormap_lut(name: str) -> NDArray[np.uint8]:
    """(256, 3) uint8 RGB of matplotlib's colormap `name` (one of `COLORMAPS`)."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}: choose one of {', '.join(COLORMAPS)}")
    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def heat_tile(
    values: NDArray[np.float32],
    grid: CellGrid,
    pyramid: Pyramid,
    level: int,
    box: tuple[int, int, int, int],
    lut: NDArray[np.uint8],
    threshold: float = 0.0,
) -> NDArray[np.uint8]:
    """RGBA pixels (h, w, 4) of a heatmap tile: each pixel takes the cell under its centre.

    `values` is (grid rows, grid cols) in [0, 1], NaN off tissue. Off the grid, off tissue and
    below `threshold` are transparent; the rest is `lut`'s colour, opaque (the viewer fades the
    layer as a whole)."""
    x, y, w, h = box
    d = pyramid.downsample(level)
    px = (x + np.arange(w, dtype=np.float64) + 0.5) * d
    py = (y + np.arange(h, dtype=np.float64) + 0.5) * d
    c_rows, r_inside = _axis(grid, py, 0)
    c_cols, c_inside = _axis(grid, px, 1)
    v = values[c_rows[:, None], c_cols[None, :]]
    shown = r_inside[:, None] & c_inside[None, :] & np.isfinite(v)
    shown &= np.where(np.isfinite(v), v, -1.0) >= threshold
    index = np.clip(np.nan_to_num(v, nan=0.0) * 255 + 0.5, 0, 255).astype(np.intp)
    out = np.zeros((h, w, 4), dtype=np.uint8)
    out[..., :3] = lut[index]
    out[..., 3] = np.where(shown, 255, 0)
    out[~shown, :3] = 0
    return out


def _axis(
    grid: CellGrid, points: NDArray[np.float64], axis: int
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Cell index along one axis (0 rows, 1 columns) under each level-0 coordinate."""
    n = grid.shape[axis]
    i = np.searchsorted(grid.edges(n), points, side="right") - 1
    inside = (i >= 0) & (i < n)
    return np.clip(i, 0, max(n - 1, 0)), inside


def index_grid(grid_index: NDArray[np.integer], shape: tuple[int, int]) -> NDArray[np.int32]:
    """(rows, cols) → the tile index at each cell, -1 where no tile was kept."""
    out = np.full(shape, -1, dtype=np.int32)
    out[grid_index[:, 0], grid_index[:, 1]] = np.arange(grid_index.shape[0], dtype=np.int32)
    return out


def attention_values(
    attention: NDArray[np.float32], grid_index: NDArray[np.integer], shape: tuple[int, int]
) -> NDArray[np.float32]:
    """Attention on the grid, scaled so the slide's highest tile is 1 (attention sums to 1 over
    a slide, so raw values shrink with its size); NaN where no tile was kept."""
    out = np.full(shape, np.nan, dtype=np.float32)
    if attention.size:
        top = float(np.max(attention))
        scaled = attention / top if top > 0 else np.zeros_like(attention)
        out[grid_index[:, 0], grid_index[:, 1]] = scaled
    return out


def signed_values(
    values: NDArray[np.float32],
    grid_index: NDArray[np.integer],
    shape: tuple[int, int],
    scale: float,
) -> NDArray[np.float32]:
    """Signed per-tile values (Shapley shares) on the grid for a diverging colormap: v ↦ 0.5 +
    0.5 · v / `scale`, so 0 is the colormap's middle and ±`scale` its ends (clipped beyond);
    NaN where no tile was kept or the value is NaN."""
    out = np.full(shape, np.nan, dtype=np.float32)
    if values.size:
        mapped = 0.5 + 0.5 * np.clip(values / (scale if scale > 0 else 1.0), -1.0, 1.0)
        out[grid_index[:, 0], grid_index[:, 1]] = mapped
    return out


def top_k(values: NDArray[np.floating], k: int) -> NDArray[np.int64]:
    """Indices of the `k` largest finite values, largest first (ties: lower index first)."""
    finite = np.flatnonzero(np.isfinite(values))
    order = np.lexsort((finite, -values[finite]))
    return finite[order[:k]].astype(np.int64)
