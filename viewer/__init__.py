"""The web viewer: run pages, a DeepZoom slide with a tiled heatmap over it, tile scores and the
top-k tiles, served by `slidemill view` and mounted in `slidemill serve`.

Pure arithmetic (pyramid, cell geometry, heatmap tiles) in `_geometry`; run folders read by id in
`_runs`; slide pixels through openslide's DeepZoom in `_slides`; the HTTP routes in `_app`."""

from slidemill.viewer._app import TOKEN_COOKIE, ViewerOptions, create_viewer_app
from slidemill.viewer._assets import OSD_ENV, openseadragon_dir
from slidemill.viewer._bench import Latencies, PanReport, pan_benchmark, viewer_benchmark
from slidemill.viewer._geometry import (
    COLORMAPS,
    CellGrid,
    Pyramid,
    attention_values,
    colormap_lut,
    heat_tile,
    index_grid,
    top_k,
)
from slidemill.viewer._runs import (
    FolderCatalog,
    LookupCatalog,
    RunCatalog,
    RunRef,
    SlideRow,
    load_slide,
    slide_rows,
)
from slidemill.viewer._serve import check_run_folders, view
from slidemill.viewer.errors import (
    NotFoundError,
    UnauthorizedError,
    ViewerConfigError,
    ViewerError,
)

__all__ = [
    "COLORMAPS",
    "OSD_ENV",
    "TOKEN_COOKIE",
    "CellGrid",
    "FolderCatalog",
    "Latencies",
    "LookupCatalog",
    "NotFoundError",
    "PanReport",
    "Pyramid",
    "RunCatalog",
    "RunRef",
    "SlideRow",
    "UnauthorizedError",
    "ViewerConfigError",
    "ViewerError",
    "ViewerOptions",
    "attention_values",
    "check_run_folders",
    "colormap_lut",
    "create_viewer_app",
    "heat_tile",
    "index_grid",
    "load_slide",
    "openseadragon_dir",
    "pan_benchmark",
    "slide_rows",
    "top_k",
    "view",
    "viewer_benchmark",
]
