"""Where the sample slide is: the real slide the demo runs on beside its generated ones."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_NAME = "CMU-1-Small-Region.svs"


def default_sample(*folders: Path) -> Path | None:
    """$SLIDEMILL_SAMPLE_SLIDE, else the sample slide in one of `folders`, else in
    `../shared/data/` beside the working directory (where `make` runs). Never relative to the
    installed package, which may live anywhere."""
    env = os.environ.get("SLIDEMILL_SAMPLE_SLIDE")
    candidates = [Path(env)] if env else []
    candidates += [Path(f) / SAMPLE_NAME for f in folders]
    candidates += [Path.cwd().parent / "shared" / "data" / SAMPLE_NAME]
    return next((p for p in candidates if p.is_file()), None)
