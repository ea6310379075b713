"""The Dask graph: read slides, find tissue, plan tiles, tile into Zarr, run the model on workers,
reduce scores into heatmaps and diagnoses. The `slidemill` command line lives here."""

from pipeline._batch import BatchReport, run_batch, tiling_for
from pipeline._discover import SlideEntry, assign_ids, expand
from pipeline._grid import TileGrid, grid_shape, plan_grid, tile_tissue_fractions
from pipeline._heatmap import rasterise
from pipeline._levels import LevelChoice, choose_level
from pipeline._readers import OpenSlideReader, SlideReader, open_slide, register_reader
from pipeline._tiffdirect import TiffDirectReader  # registers the fast path
from pipeline._tissue import tissue_mask

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
