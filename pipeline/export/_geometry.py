"""Where the heatmap's cells lie on the slide (pure): the one geometry the OME-Zarr transforms and
the QuPath polygons are both made from, so the two files cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from slidemill.schemas import SlideStoreAttrs


@dataclass(frozen=True, slots=True)
class CellGeometry:
    """The tile grid of one slide, as the heatmap paints it.

    Tile (r, c) covers level-0 [origin(c), origin(c) + tile) (`pipeline.tissue.origin`); its
    heatmap cell is the centre stride-square of that tile. Cells are laid out unrounded
    (c × stride + offset), so neighbours share their edges exactly and never overlap."""

    tile_level0: float
    """Tile edge in level-0 pixels."""
    stride_level0: float
    """Distance between neighbouring tiles (and cell edge) in level-0 pixels."""
    grid_shape: tuple[int, int]
    """Grid rows and columns (the heatmap's y, x)."""
    slide_dimensions: tuple[int, int]
    """Level-0 width and height."""
    mpp: float
    """Level-0 µm per pixel."""

    @classmethod
    def of(cls, attrs: SlideStoreAttrs, mpp: float) -> CellGeometry:
        return cls(
            attrs.tile_size_level0, attrs.stride_level0, attrs.grid_shape,
            attrs.slide_dimensions, mpp,
        )  # fmt: skip

    @property
    def offset_level0(self) -> float:
        """Level-0 distance from a tile's corner to its cell's corner."""
        return (self.tile_level0 - self.stride_level0) / 2

    @property
    def cell_um(self) -> float:
        """Edge of one heatmap cell in µm: the OME-Zarr level-0 scale."""
        return self.stride_level0 * self.mpp

    @property
    def first_centre_um(self) -> float:
        """Where cell (0, 0)'s centre lies, in µm, on both axes: the OME-Zarr level-0 translation.

        NGFF readers (napari among them) put an array index at its pixel's centre, and the
        slide's own pixel i at i × mpp; the cell spans level-0 [offset, offset + stride) where
        slide pixel i spans [i, i + 1), so its centre is offset + stride/2 − 1/2 slide pixels.
        A translation to the cell's corner would draw the heatmap half a cell up and left."""
        return (self.offset_level0 + self.stride_level0 / 2 - 0.5) * self.mpp

    def cell_boxes(self, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.float64]:
        """Level-0 (x0, y0, x1, y1) of the cells at (rows, cols); shape (N, 4)."""
        r = np.asarray(rows, dtype=np.float64)
        c = np.asarray(cols, dtype=np.float64)
        s, o = self.stride_level0, self.offset_level0
        return np.stack([c * s + o, r * s + o, (c + 1) * s + o, (r + 1) * s + o], axis=1)


def positive_classes(class_names: tuple[str, ...]) -> tuple[int, ...]:
    """Class indices whose regions are drawn: the second of two classes, else every class after
    the first (the first is taken to be the benign or background class)."""
    return (1,) if len(class_names) == 2 else tuple(range(1, len(class_names)))
