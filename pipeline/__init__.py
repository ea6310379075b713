"""The Dask graph: read slides, find tissue, plan tiles, tile into Zarr, run the model on workers,
reduce scores into heatmaps and diagnoses. The `slidemill` command line lives here."""

from slidemill.pipeline.graph import BatchReport, rasterise, run_batch, tiling_for
from slidemill.pipeline.slides import (
    LevelChoice,
    OpenSlideReader,
    SlideEntry,
    SlideReader,
    TiffDirectReader,  # registers the fast path
    assign_ids,
    choose_level,
    expand,
    open_slide,
    register_reader,
)
from slidemill.pipeline.tissue import (
    TileGrid,
    grid_shape,
    plan_grid,
    tile_tissue_fractions,
    tissue_mask,
)

__all__ = [
    "BatchReport",
    "LevelChoice",
    "OpenSlideReader",
    "SlideEntry",
    "SlideReader",
    "TiffDirectReader",
    "TileGrid",
    "assign_ids",
    "choose_level",
    "expand",
    "grid_shape",
    "open_slide",
    "plan_grid",
    "rasterise",
    "register_reader",
    "run_batch",
    "tile_tissue_fractions",
    "tiling_for",
    "tissue_mask",
]
