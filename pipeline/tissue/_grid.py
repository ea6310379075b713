"""Pure tile-grid planning: where tiles go over a slide, and which ones hold enough tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class TileGrid:
    """A regular grid of square tiles over level 0, of which `rows`/`cols` are kept."""

    tile_level0: float
    """Tile edge in level-0 pixels."""
    stride_level0: float
    """Distance between neighbouring tile origins in level-0 pixels."""
    shape: tuple[int, int]
    """Grid rows and columns (whole tiles that fit inside the slide)."""
    rows: NDArray[np.int64]
    """Grid row of each kept tile, shape (n,), row-major order."""
    cols: NDArray[np.int64]
    """Grid column of each kept tile, shape (n,)."""
    tissue_fraction: NDArray[np.float32]
    """Tissue fraction of each kept tile in [0, 1], shape (n,)."""

    @property
    def n_tiles(self) -> int:
        return int(self.rows.shape[0])

    def coords(self) -> NDArray[np.int64]:
        """Level-0 (x, y) of each kept tile's top-left corner, shape (n, 2)."""
        return np.stack(
            [origin(self.cols, self.stride_level0), origin(self.rows, self.stride_level0)], axis=1
        )


def origin(index: NDArray[np.int64], stride_level0: float) -> NDArray[np.int64]:
    """Level-0 origin of grid index `index` (rounded once, so errors never accumulate)."""
    return np.floor(index * stride_level0 + 0.5).astype(np.int64)


def grid_shape(
    width: int, height: int, tile_level0: float, stride_level0: float
) -> tuple[int, int]:
    """Rows and columns of whole tiles that fit inside a `width` × `height` level-0 image."""
    if tile_level0 <= 0 or stride_level0 <= 0:
        raise ValueError("tile and stride must be positive")

    def fit(extent: int) -> int:
        if extent < tile_level0:
            return 0
        # the small epsilon absorbs float error when a tile ends exactly on the edge
        return math.floor((extent - tile_level0) / stride_level0 + 1e-9) + 1

    return fit(height), fit(width)


def tile_tissue_fractions(
    mask: NDArray[np.bool_],
    mask_scale: float,
    shape: tuple[int, int],
    tile_level0: float,
    stride_level0: float,
) -> NDArray[np.float32]:
    """Tissue fraction of every grid cell, shape `shape`, from a low-resolution `mask`.

    `mask_scale` is mask pixels per level-0 pixel. Each tile's footprint is mapped onto the mask
    and the mask pixels whose centres fall inside it are averaged (an integral image makes this
    O(1) per tile); a footprint smaller than one mask pixel takes the pixel under its centre.
    """
    rows, cols = shape
    out = np.zeros(shape, dtype=np.float32)
    if rows == 0 or cols == 0:
        return out
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)

    def span(n: int, limit: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        start = np.arange(n) * stride_level0 * mask_scale
        stop = start + tile_level0 * mask_scale
        lo = np.clip(np.ceil(start - 0.5), 0, limit).astype(np.int64)
        hi = np.clip(np.ceil(stop - 0.5), 0, limit).astype(np.int64)
        centre = np.clip(np.floor((start + stop) / 2), 0, limit - 1).astype(np.int64)
        empty = hi <= lo
        lo = np.where(empty, centre, lo)
        hi = np.where(empty, centre + 1, hi)
        return lo, hi

    y0, y1 = span(rows, mask.shape[0])
    x0, x1 = span(cols, mask.shape[1])
    total = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    out[:] = total / np.maximum(area, 1)
    return out


def plan_grid(
    mask: NDArray[np.bool_],
    mask_scale: float,
    width: int,
    height: int,
    tile_level0: float,
    stride_level0: float,
    min_tissue_fraction: float,
) -> TileGrid:
    """The grid over a `width` × `height` slide, keeping tiles with enough tissue in `mask`."""
    shape = grid_shape(width, height, tile_level0, stride_level0)
    fractions = tile_tissue_fractions(mask, mask_scale, shape, tile_level0, stride_level0)
    keep = fractions >= min_tissue_fraction
    if min_tissue_fraction <= 0:
        keep[:] = True
    rows, cols = np.nonzero(keep)
    return TileGrid(
        tile_level0=tile_level0,
        stride_level0=stride_level0,
        shape=shape,
        rows=rows.astype(np.int64),
        cols=cols.astype(np.int64),
        tissue_fraction=fractions[rows, cols].astype(np.float32),
    )


def blocks(n_tiles: int, per_block: int) -> list[tuple[int, int]]:
    """Split `n_tiles` into consecutive [start, stop) blocks of at most `per_block`."""
    return [(s, min(s + per_block, n_tiles)) for s in range(0, n_tiles, per_block)]
