"""The batch report: one self-contained HTML page per batch (`<out>/report.html`), the lab's
record of the night. Inline CSS, no scripts, no external URLs; thumbnails are embedded as data
URIs, cut from each slide's `heatmap.png` (never from a label or macro image)."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from PIL import Image, UnidentifiedImageError

from slidemill.schemas import SlideResult, TilingSpec, slidemill_version
from slidemill.schemas.files import staged
from slidemill.schemas.layout import HEATMAP_PNG, REPORT_HTML

log = logging.getLogger(__name__)

THUMB_MAX_PX = 320
"""Embedded thumbnails are at most this wide: a night of 500 slides stays a few MB."""
_JPEG_QUALITY = 80

# autoescape: every value given to the page is escaped there
_PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("slidemill.pipeline.export"),
    autoescape=True,
    trim_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def result_flags(result: SlideResult) -> tuple[str, ...]:
    """The trust flags of a result, where the result carries any (issue 12 adds them as
    `qc`, with `flags`); read defensively, so results without them show none."""
    qc = getattr(result, "qc", None)
    flags = getattr(qc, "flags", qc) if qc is not None else getattr(result, "flags", None)
    if flags is None:
        return ()
    if isinstance(flags, str):
        return (flags,)
    if isinstance(flags, Mapping):
        return tuple(str(k) for k, v in flags.items() if v)
    try:
        return tuple(_flag_text(f) for f in flags)
    except TypeError:
        return (str(flags),)


def _flag_text(flag: object) -> str:
    """ "code: reason" for a flag with both (issue 12's `Flag`), else its text."""
    code = getattr(flag, "code", None)
    if code is None:
        return str(getattr(flag, "value", flag))
    code = getattr(code, "value", code)
    reason = getattr(flag, "reason", None)
    return f"{code}: {reason}" if reason else str(code)


def _tiling(t: TilingSpec) -> str:
    return (
        f"{t.tile_px} px at {t.mpp:g} µm/px, overlap {t.overlap_px} px, tissue "
        f"{t.tissue_method.value} ≥ {t.min_tissue_fraction:.0%}"
    )


def _distinct(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def render_batch_report(
    results: Sequence[SlideResult],
    thumbnails: Mapping[str, str],
    *,
    title: str = "slidemill batch report",
    stopped: str | None = None,
    created: datetime | None = None,
) -> str:
    """The page for `results` (pure); `thumbnails` maps slide id → an image data URI. Every
    value is escaped."""
    return "".join(
        _report_pieces(results, thumbnails.get, title=title, stopped=stopped, created=created)
    )


def _report_pieces(
    results: Sequence[SlideResult],
    thumbnail: Callable[[str], str | None],
    *,
    title: str,
    stopped: str | None,
    created: datetime | None,
) -> Iterator[str]:
    """The page of `render_batch_report` (`templates/batch_report.html.j2`) in pieces, asking
    `thumbnail` for each slide's data URI as its row comes: a writer that writes each piece as
    it comes holds one thumbnail at a time, however many slides the batch had."""
    created = created or datetime.now(UTC)
    classes = _distinct([c for r in results for c in r.class_names])
    flags = {r.slide_id: result_flags(r) for r in results}
    any_flags = any(flags.values())
    head = ["slide", "label", *[f"P({c})" for c in classes], "tiles"]
    head += ["flags"] if any_flags else []
    head += ["heatmap"]
    rows = []
    for r in results:
        if r.status != "done":
            continue
        probs = dict(zip(r.class_names, r.probabilities, strict=False))
        rows.append(
            {
                "slide_id": r.slide_id,
                "path": r.path,
                "label": r.label or "—",
                "probs": [f"{probs[c]:.3f}" if c in probs else "—" for c in classes],
                "n_tiles": r.n_tiles,
                "flags": ", ".join(flags[r.slide_id]),
            }
        )
    provenance = [r.provenance for r in results]
    yield from _PAGES.get_template("batch_report.html.j2").generate(
        title=title,
        n_results=len(results),
        counts={s: sum(r.status == s for r in results) for s in ("done", "failed", "skipped")},
        created=created.strftime("%Y-%m-%d %H:%M UTC"),
        stopped=stopped,
        head=head,
        any_flags=any_flags,
        rows=rows,
        thumbnail=thumbnail,
        failures=[r for r in results if r.status != "done"],
        provenance=[
            ("model sha256", _distinct([p.model_sha256 or "" for p in provenance])),
            ("slidemill (slides)", _distinct([p.slidemill_version for p in provenance])),
            ("tiling", _distinct([_tiling(p.tiling) for p in provenance if p.tiling is not None])),
            ("report written by", [f"slidemill {slidemill_version()}"]),
        ],
    )


def thumbnail_uri(png: Path, max_px: int = THUMB_MAX_PX) -> str | None:
    """`png` shrunk to at most `max_px` wide, as a JPEG data URI; None when it cannot be read
    (the report then shows no thumbnail for that slide rather than failing)."""
    try:
        with Image.open(png) as source:
            rgb = source.convert("RGB")
        if rgb.width > max_px:
            rgb = rgb.resize((max_px, max(1, round(rgb.height * max_px / rgb.width))))
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
    except (OSError, UnidentifiedImageError) as err:
        log.warning("%s: no thumbnail for the report (%s)", png, err)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_batch_report(
    out: Path, results: Sequence[SlideResult], *, stopped: str | None = None
) -> Path:
    """Write `<out>/report.html` for `results` (temporary name, then rename); return its path.

    Written row by row, each slide's thumbnail made as its row is written: the client holds
    one thumbnail at a time rather than a night's worth."""
    drawn = {r.slide_id for r in results if r.status == "done" and r.class_names}

    def thumbnail(slide_id: str) -> str | None:
        # a features-only run draws no heatmap
        return thumbnail_uri(out / slide_id / HEATMAP_PNG) if slide_id in drawn else None

    path = out / REPORT_HTML
    pieces = _report_pieces(
        results, thumbnail, title=f"slidemill batch report: {out.name}", stopped=stopped,
        created=None,
    )  # fmt: skip
    with staged(path) as tmp, tmp.open("w", encoding="utf-8") as page:
        page.writelines(pieces)
    return path
