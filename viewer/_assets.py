"""Where the viewer's browser files are: its own pages and scripts (package data), and
OpenSeadragon, from the npm registry at the version viewer/package-lock.json pins, never copied
into the repository: inside an installed wheel (its build step runs `npm ci`, setup.py), or in a
checkout's viewer/node_modules (`make install`)."""

from __future__ import annotations

import os
from pathlib import Path

from slidemill.viewer.errors import ViewerConfigError

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
OSD_ENV = "SLIDEMILL_OPENSEADRAGON_DIR"
"""Names another OpenSeadragon build folder; neither a wheel nor a checkout needs it."""
PACKAGED_OSD = HERE / "openseadragon"
"""Where a wheel holds OpenSeadragon's build folder."""
CHECKOUT_OSD = HERE / "node_modules/openseadragon/build/openseadragon"
"""Where `npm ci --prefix viewer` puts it in a checkout."""


def openseadragon_dir() -> Path:
    """OpenSeadragon's build folder (openseadragon.min.js and its images/): the one `OSD_ENV`
    names when set, else the wheel's, else the checkout's."""
    given = os.environ.get(OSD_ENV)
    candidates = [Path(given)] if given else [PACKAGED_OSD, CHECKOUT_OSD]
    for folder in candidates:
        if (folder / "openseadragon.min.js").is_file():
            return folder
    raise ViewerConfigError(
        f"OpenSeadragon is not installed in {' nor '.join(map(str, candidates))}: in a checkout "
        f"run `make install` (npm ci in viewer/); an installed wheel carries it, so reinstall "
        f"slidemill from a wheel built with `python -m build`; or set {OSD_ENV} to its build folder"
    )
