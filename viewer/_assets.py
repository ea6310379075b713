"""Where the viewer's browser files are: its own pages and scripts (package data), and
OpenSeadragon, installed from the npm registry by `make install` (`npm ci` in viewer/, pinned
by viewer/package-lock.json) and never copied into the repository."""

from __future__ import annotations

import os
from pathlib import Path

from slidemill.viewer.errors import ViewerConfigError

STATIC_DIR = Path(__file__).resolve().parent / "static"
OSD_ENV = "SLIDEMILL_OPENSEADRAGON_DIR"
"""Names OpenSeadragon's build folder where the checkout's node_modules is not (a wheel)."""


def openseadragon_dir() -> Path:
    """OpenSeadragon's build folder (openseadragon.min.js and its images/)."""
    given = os.environ.get(OSD_ENV)
    folder = (
        Path(given)
        if given
        else Path(__file__).resolve().parent / "node_modules/openseadragon/build/openseadragon"
    )
    if not (folder / "openseadragon.min.js").is_file():
        raise ViewerConfigError(
            f"OpenSeadragon is not installed in {folder}: run `make install` (npm ci in viewer/) "
            f"or set {OSD_ENV} to its build folder"
        )
    return folder
