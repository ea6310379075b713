"""The report on disk: `evaluation.json`, the two PNGs and a self-contained HTML page."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slidemill.pipeline.evaluation._plots import calibration_figure, roc_figure
from slidemill.schemas import ClassificationMetrics, EvaluationReport
from slidemill.schemas.files import write_atomic
from slidemill.workers.metrics import CalibrationCurve, EvaluationError, RocCurve

REPORT_FILES = ("evaluation.json", "roc.png", "calibration.png", "report.html")
"""The files `render_report` writes into its folder."""

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 48%; margin-right: 1%; border: 1px solid #ddd; }
code { font-size: 0.9em; } .muted { color: #666; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else _e(f"{x:.{digits}f}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A table; header cells are escaped here, row cells must already be escaped."""

    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(m: ClassificationMetrics) -> str:
    if m.auroc_ci is None:
        return "—"
    return _e(f"{m.auroc_ci.low:.3f}–{m.auroc_ci.high:.3f}")


def render_html(report: EvaluationReport) -> str:
    """A self-contained HTML page of the report: inline CSS, no scripts, no external assets;
    the two PNGs by relative path. Every value is escaped."""
    r = report
    binary = len(r.class_names) == 2
    header = ["set", "slides", "AUROC", "AUROC CI", "balanced acc.", "macro F1"]
    header += ["F1", "threshold"] if binary else []
    header += ["ECE", "Brier"]

    def row(name: str, m: ClassificationMetrics) -> list[str]:
        cells = [_e(name), _e(m.n_slides), _num(m.auroc), _ci(m)]
        cells += [_num(m.balanced_accuracy), _num(m.macro_f1)]
        cells += [_num(m.f1), _num(m.threshold)] if binary else []
        cells += [_num(m.ece), _num(m.brier)]
        return cells

    figures = _table(header, [row(f.fold, f) for f in r.folds] + [row("pooled", r.pooled)])
    per_class = _table(
        ["class", "slides", "one-vs-rest AUROC"],
        [
            [_e(name), _e(n), _num(a)]
            for name, n, a in zip(
                r.class_names, r.pooled.n_slides_per_class, r.pooled.auroc_per_class, strict=True
            )
        ],
    )
    cm = _table(
        ["true \\ predicted", *r.class_names],
        [
            [_e(name), *(_e(v) for v in counts)]
            for name, counts in zip(r.class_names, r.pooled.confusion_matrix, strict=True)
        ],
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>slidemill evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>slidemill evaluation</h1>",
        f'<p class="muted">model <code>{_e(r.model_sha256)}</code> · slidemill '
        f"{_e(r.slidemill_version)} · classes {_e(', '.join(r.class_names))}"
        + (f" (positive: {_e(r.positive_class)})" if r.positive_class is not None else "")
        + "</p>",
        "<h2>Slide-level figures</h2>",
        figures,
        '<p><img src="roc.png" alt="ROC curves"><img src="calibration.png" '
        'alt="Reliability diagram"></p>',
        "<h2>Pooled, per class</h2>",
        per_class,
        "<h2>Pooled confusion matrix</h2>",
        cm,
    ]
    ts = r.temperature_scaling
    if ts is not None:
        parts.append(
            f"<h2>Calibration</h2><p>Temperature scaling (T = {_num(ts.temperature, 2)}): ECE "
            f"{_num(ts.ece_before)} → <b>{_num(ts.ece_after)}</b>, Brier {_num(ts.brier_before)}"
            f" → <b>{_num(ts.brier_after)}</b>, AUROC {_num(ts.auroc_before)} → "
            f"{_num(ts.auroc_after)}.</p>"
        )
    loc = r.localisation
    if loc is not None:
        parts += [
            "<h2>Lesion localisation</h2>",
            f"<p>Tile AUROC against lesion fraction ≥ {_num(loc.lesion_fraction_threshold, 2)}"
            f" over {_e(loc.n_slides)} slides ({_e(loc.n_tiles)} tiles, {_e(loc.n_lesion_tiles)}"
            f" lesion): pooled <b>{_num(loc.pooled_auroc)}</b>, mean per slide "
            f"<b>{_num(loc.per_slide_mean_auroc)}</b> (tile scores); attention: pooled "
            f"<b>{_num(loc.attention_pooled_auroc)}</b>, mean per slide "
            f"<b>{_num(loc.attention_per_slide_mean_auroc)}</b>. Top-k: the share of a slide's "
            "k most attended tiles that are lesion, k its number of lesion tiles.</p>",
            _table(
                ["slide", "AUROC (tile scores)", "top-k (attention)", "note"],
                [
                    [_e(s), _num(a), _num(loc.attention_top_k.get(s)), ""]
                    for s, a in sorted(loc.per_slide_auroc.items())
                ]
                + [
                    [_e(s), "—", _num(loc.attention_top_k.get(s)), _e(why)]
                    for s, why in sorted(loc.skipped.items())
                ],
            ),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_report(
    report: EvaluationReport,
    roc_curves: Mapping[str, RocCurve],
    calibration: CalibrationCurve,
    out_dir: Path,
    before: CalibrationCurve | None = None,
) -> dict[str, Path]:
    """Write `evaluation.json`, `roc.png`, `calibration.png` and `report.html` into `out_dir`,
    each under a temporary name then renamed; the page last, so the images it names exist.

    Returns file name → path written.
    """
    if not roc_curves:
        raise EvaluationError("render_report needs at least one ROC curve")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in REPORT_FILES}
    write_atomic(paths["roc.png"], _png(roc_figure(roc_curves)))
    write_atomic(paths["calibration.png"], _png(calibration_figure(calibration, before)))
    write_atomic(paths["evaluation.json"], (report.model_dump_json(indent=2) + "\n").encode())
    write_atomic(paths["report.html"], render_html(report).encode())
    return paths


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
