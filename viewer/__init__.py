"""The web viewer: run pages, a DeepZoom slide with a tiled heatmap over it (and the explanation of
an explained slide), tile scores and the top-k tiles, served by `slidemill view` and mounted in
`slidemill serve`.

Pure arithmetic (pyramid, cell geometry, heatmap tiles) in `_geometry`; run folders read by id in
`_runs`; slide pixels through openslide's DeepZoom in `_slides`; the HTTP routes in `_app`; who may
reach a server (the token rule and loopback, which the service shares; sessions) in `_access`."""

from slidemill.viewer._access import (
    MIN_TOKEN_CHARS,
    SessionStore,
    checked_token,
    is_loopback,
)
from slidemill.viewer._app import SESSION_COOKIE, ViewerOptions, create_viewer_app
from slidemill.viewer._assets import OSD_ENV, openseadragon_dir
from slidemill.viewer._geometry import (
    COLORMAPS,
    CellGrid,
    Pyramid,
    attention_values,
    colormap_lut,
    heat_tile,
    index_grid,
    signed_values,
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
from slidemill.viewer._slides import DZ_TILE, SlideSources
from slidemill.viewer.errors import (
    NotFoundError,
    UnauthorizedError,
    ViewerConfigError,
    ViewerError,
)

__all__ = [
    "COLORMAPS",
    "DZ_TILE",
    "MIN_TOKEN_CHARS",
    "OSD_ENV",
    "SESSION_COOKIE",
    "CellGrid",
    "FolderCatalog",
    "LookupCatalog",
    "NotFoundError",
    "Pyramid",
    "RunCatalog",
    "RunRef",
    "SessionStore",
    "SlideRow",
    "SlideSources",
    "UnauthorizedError",
    "ViewerConfigError",
    "ViewerError",
    "ViewerOptions",
    "attention_values",
    "check_run_folders",
    "checked_token",
    "colormap_lut",
    "create_viewer_app",
    "heat_tile",
    "index_grid",
    "is_loopback",
    "load_slide",
    "openseadragon_dir",
    "signed_values",
    "slide_rows",
    "top_k",
    "view",
]
