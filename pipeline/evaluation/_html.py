"""The report on disk: `evaluation.json`, the two PNGs and a self-contained HTML page."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from slidemill.pipeline.evaluation._plots import calibration_figure, roc_figure
from slidemill.schemas import ClassificationMetrics, EvaluationReport
from slidemill.schemas.files import write_atomic
from slidemill.workers.metrics import CalibrationCurve, EvaluationError, RocCurve

REPORT_FILES = ("evaluation.json", "roc.png", "calibration.png", "report.html")
"""The files `render_report` writes into its folder."""

# autoescape: every value given to the page is escaped there
_PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("slidemill.pipeline.evaluation"),
    autoescape=True,
    trim_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_PAGES.filters["num"] = lambda x, digits=3: "—" if x is None else f"{x:.{digits}f}"


def render_html(report: EvaluationReport) -> str:
    """A self-contained HTML page of the report (`templates/report.html.j2`): inline CSS, no
    scripts, no external assets; the two PNGs by relative path. Every value is escaped."""
    r = report
    binary = len(r.class_names) == 2
    header = ["set", "slides", "AUROC", "AUROC CI", "balanced acc.", "macro F1"]
    header += ["F1", "threshold"] if binary else []
    header += ["ECE", "Brier"]
    num = _PAGES.filters["num"]

    def row(name: str, m: ClassificationMetrics) -> list[str]:
        ci = "—" if m.auroc_ci is None else f"{m.auroc_ci.low:.3f}–{m.auroc_ci.high:.3f}"
        cells = [name, str(m.n_slides), num(m.auroc), ci]
        cells += [num(m.balanced_accuracy), num(m.macro_f1)]
        cells += [num(m.f1), num(m.threshold)] if binary else []
        cells += [num(m.ece), num(m.brier)]
        return cells

    loc = r.localisation
    return _PAGES.get_template("report.html.j2").render(
        r=r,
        figures_header=header,
        figures=[row(f.fold, f) for f in r.folds] + [row("pooled", r.pooled)],
        per_class=[
            [name, n, num(a)]
            for name, n, a in zip(
                r.class_names, r.pooled.n_slides_per_class, r.pooled.auroc_per_class, strict=True
            )
        ],
        confusion=[
            [name, *counts]
            for name, counts in zip(r.class_names, r.pooled.confusion_matrix, strict=True)
        ],
        localisation=[]
        if loc is None
        else [
            [s, num(a), num(loc.attention_top_k.get(s)), ""]
            for s, a in sorted(loc.per_slide_auroc.items())
        ]
        + [
            [s, "—", num(loc.attention_top_k.get(s)), why] for s, why in sorted(loc.skipped.items())
        ],
    )


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
