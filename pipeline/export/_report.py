"""The batch report: one self-contained HTML page per batch (`<out>/report.html`), the lab's
record of the night. Inline CSS, no scripts, no external URLs; thumbnails are embedded as data
URIs, cut from each slide's `heatmap.png` (never from a label or macro image)."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from slidemill.schemas import SlideResult, TilingSpec, slidemill_version
from slidemill.schemas.files import staged
from slidemill.schemas.layout import HEATMAP_PNG, REPORT_HTML

log = logging.getLogger(__name__)

THUMB_MAX_PX = 320
"""Embedded thumbnails are at most this wide: a night of 500 slides stays a few MB."""
_JPEG_QUALITY = 80

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
code { font-size: 0.9em; } .muted { color: #666; } .flag { color: #a40; }
td img { display: block; max-width: 320px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


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
    """The page of `render_batch_report` in pieces, one per diagnosed slide's row, asking
    `thumbnail` for each slide's data URI as its row comes: a writer that writes each piece as
    it comes holds one thumbnail at a time, however many slides the batch had."""
    created = created or datetime.now(UTC)
    classes = _distinct([c for r in results for c in r.class_names])
    flags = {r.slide_id: result_flags(r) for r in results}
    any_flags = any(flags.values())
    done = [r for r in results if r.status == "done"]
    failures = [r for r in results if r.status != "done"]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "failed", "skipped")}

    head = ["slide", "label", *[f"P({c})" for c in classes], "tiles"]
    head += ["flags"] if any_flags else []
    head += ["heatmap"]
    rows: list[tuple[str, str]] = []  # slide id, its row up to the thumbnail's cell
    for r in done:
        probs = dict(zip(r.class_names, r.probabilities, strict=False))
        cells = [
            f'<td class="l" title="{_e(r.path)}">{_e(r.slide_id)}</td>',
            f'<td class="l"><b>{_e(r.label or "—")}</b></td>',
            *(f"<td>{_e(f'{probs[c]:.3f}') if c in probs else '—'}</td>" for c in classes),
            f"<td>{_e(r.n_tiles)}</td>",
        ]
        if any_flags:
            text = ", ".join(flags[r.slide_id])
            cells.append(f'<td class="l flag">{_e(text) if text else ""}</td>')
        rows.append((r.slide_id, "<tr>" + "".join(cells)))

    def th(h: str, i: int) -> str:
        return (
            f'<th class="l">{_e(h)}</th>'
            if i < 2 or h in ("flags", "heatmap")
            else (f"<th>{_e(h)}</th>")
        )

    failure_rows = "".join(
        f'<tr><td class="l">{_e(r.slide_id)}</td><td class="l">{_e(r.status)}</td>'
        f'<td class="l">{_e(r.error or "")}</td></tr>'
        for r in failures
    )
    failed_table = (
        '<table><thead><tr><th class="l">slide</th><th class="l">status</th>'
        f'<th class="l">reason</th></tr></thead><tbody>{failure_rows}</tbody></table>'
        if failures else "<p>None.</p>"
    )  # fmt: skip
    provenance = [r.provenance for r in results]
    models = _distinct([p.model_sha256 or "" for p in provenance])
    versions = _distinct([p.slidemill_version for p in provenance])
    tilings = _distinct([_tiling(p.tiling) for p in provenance if p.tiling is not None])
    prov_rows = [
        ("model sha256", models),
        ("slidemill (slides)", versions),
        ("tiling", tilings),
        ("report written by", [f"slidemill {slidemill_version()}"]),
    ]
    prov = "".join(
        f'<tr><th class="l">{_e(k)}</th><td class="l">'
        + ("<br>".join(f"<code>{_e(v)}</code>" for v in values) or "—")
        + "</td></tr>"
        for k, values in prov_rows
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{_e(len(results))} slides: {_e(counts["done"])} done, '
        f"{_e(counts['failed'])} failed, {_e(counts['skipped'])} skipped · written "
        f"{_e(created.strftime('%Y-%m-%d %H:%M UTC'))}</p>",
    ]
    if stopped:
        parts.append(f'<p class="flag">The batch stopped early: {_e(stopped)}</p>')
    parts.append("<h2>Diagnoses</h2>")
    yield "\n".join(parts) + "\n"
    if rows:
        yield "<table><thead><tr>" + "".join(th(h, i) for i, h in enumerate(head))
        yield "</tr></thead><tbody>"
        for slide_id, row in rows:
            uri = thumbnail(slide_id)
            img = f'<img src="{_e(uri)}" alt="heatmap of {_e(slide_id)}">' if uri else "—"
            yield f'{row}<td class="l">{img}</td></tr>'
        yield "</tbody></table>"
    else:
        yield "<p>No slide was diagnosed.</p>"
    yield "\n" + "\n".join(
        [
            "<h2>Failed and skipped slides</h2>",
            failed_table,
            "<h2>Provenance</h2>",
            f"<table><tbody>{prov}</tbody></table>",
            "</body></html>\n",
        ]
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
