"""slidemill writes only into folders it made. An output folder is claimed before anything is
written into it, and a slide's folder is replaced only when slidemill built it; anything else
fails with one line and is left as it was.

A folder slidemill made carries a mark (`RUN_MARK` in an output folder, `SLIDE_MARK` in a slide's
folder). Folders written before the marks existed are recognised by their content: nothing in
them but the layout's own names, and, for a slide's folder, a readable `result.json`. Every
decision reads the disk at the moment of use: a folder created after a request was accepted is
judged when the run gets to it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from slidemill.pipeline.errors import OutputNotOursError, SlideFolderNotOursError
from slidemill.schemas import SlideResult
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import (
    ENCODER_BUNDLE,
    HEATMAP_OME_ZARR,
    HEATMAP_PNG,
    LAYOUT_VERSION,
    LOCK_FILE,
    PARTIAL_DIR,
    QUPATH_GEOJSON,
    REPORT_HTML,
    RESULT_JSON,
    RESULTS_CSV,
    RUN_MARK,
    SLIDE_MARK,
    SLIDE_STORE,
)

_RUN_NAMES = frozenset({RESULTS_CSV, REPORT_HTML, PARTIAL_DIR, LOCK_FILE, RUN_MARK, ENCODER_BUNDLE})
"""What an output folder holds besides slide folders."""
_SLIDE_NAMES = frozenset(
    {SLIDE_MARK, RESULT_JSON, HEATMAP_PNG, HEATMAP_OME_ZARR, QUPATH_GEOJSON, SLIDE_STORE}
)
"""What a slide's folder holds."""


def mark_slide(folder: Path) -> None:
    """Mark a slide folder being built as slidemill's."""
    write_atomic(folder / SLIDE_MARK, f"{LAYOUT_VERSION}\n")


def is_own_slide_folder(folder: Path) -> bool:
    """Whether `folder` is a slide folder slidemill built (marked, or an unmarked one of an
    earlier version: only the layout's names, and a readable result). Not a folder: False."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / SLIDE_MARK).is_file():
        return True
    try:
        names = {p.name for p in folder.iterdir()}
        SlideResult.model_validate_json((folder / RESULT_JSON).read_bytes())
    except (OSError, ValidationError):
        return False
    return names <= _SLIDE_NAMES


def check_slide_folder(out: Path, slide_id: str) -> None:
    """Raise `SlideFolderNotOursError` when `OUT/<slide_id>` exists and is not a slide folder
    slidemill built: publishing would replace it."""
    folder = out / slide_id
    if (folder.exists() or folder.is_symlink()) and not is_own_slide_folder(folder):
        raise SlideFolderNotOursError(
            f"{folder}: exists and was not written by slidemill; left untouched (move it, or "
            "choose another output folder)"
        )


def output_refusal(out: Path) -> str | None:
    """Why `out` may not be a run's output folder, or None: a missing folder (slidemill makes
    it), an empty one, or one slidemill made may be written into."""
    if out.is_symlink() and not out.exists():
        return f"{out}: a link to nothing; give a folder"
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out}: exists and is not a folder"
    if (out / RUN_MARK).is_file():
        return None
    try:
        entries = list(out.iterdir())
    except OSError as err:
        return f"{out}: cannot list it ({err.strerror or err})"
    foreign = sorted(
        p.name
        for p in entries
        if p.name not in _RUN_NAMES
        and not _is_staged(p.name)
        and not (p.is_dir() and is_own_slide_folder(p))
    )
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        return (
            f"{out}: holds files slidemill did not write ({foreign[0]!r}{more}); give a new or "
            "empty output folder"
        )
    return None


def claim_output(out: Path) -> None:
    """Make `out` (and its parents), or take it when it is empty or already slidemill's, and
    mark it; `OutputNotOursError` with the reason otherwise, before anything is written."""
    refusal = output_refusal(out)
    if refusal is not None:
        raise OutputNotOursError(refusal)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / RUN_MARK).is_file():
            write_atomic(out / RUN_MARK, f"{LAYOUT_VERSION}\n")
    except OSError as err:
        raise OutputNotOursError(f"{out}: cannot write there ({err.strerror or err})") from err


def _is_staged(name: str) -> bool:
    """A temporary sibling `write_atomic` leaves only when killed mid-write."""
    return name.startswith(".") and ".tmp" in name
