"""Where the tissue is: the mask at 8 µm/px and the tile grid laid over it (pure functions)."""

from slidemill.pipeline.tissue._grid import (
    TileGrid,
    blocks,
    grid_shape,
    origin,
    plan_grid,
    tile_tissue_fractions,
)
from slidemill.pipeline.tissue._mask import hsv_saturation, tissue_mask

__all__ = [
    "TileGrid",
    "blocks",
    "grid_shape",
    "hsv_saturation",
    "origin",
    "plan_grid",
    "tile_tissue_fractions",
    "tissue_mask",
]
