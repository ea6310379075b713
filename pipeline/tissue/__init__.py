"""Where the tissue is: the mask at 8 µm/px and the tile grid laid over it, and slide QC on the
same pixels (focus, ink, glass, brightfield H&E); pure functions."""

from slidemill.pipeline.tissue._grid import (
    TileGrid,
    blocks,
    grid_shape,
    origin,
    plan_grid,
    tile_tissue_fractions,
)
from slidemill.pipeline.tissue._mask import hsv_saturation, tissue_mask
from slidemill.pipeline.tissue._qc import (
    BLUR_LIMIT,
    ThumbnailQC,
    TileQC,
    glass,
    ink,
    qc_flags,
    thumbnail_qc,
    tile_qc,
    usable_tiles,
)

__all__ = [
    "BLUR_LIMIT",
    "ThumbnailQC",
    "TileGrid",
    "TileQC",
    "blocks",
    "glass",
    "grid_shape",
    "hsv_saturation",
    "ink",
    "origin",
    "plan_grid",
    "qc_flags",
    "thumbnail_qc",
    "tile_qc",
    "tile_tissue_fractions",
    "tissue_mask",
    "usable_tiles",
]
