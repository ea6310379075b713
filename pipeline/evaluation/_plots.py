"""The report's two figures, drawn with matplotlib's object-oriented API: ROC curves and a
reliability diagram. Drawing only; `render_report` writes them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from slidemill.workers.metrics import CalibrationCurve, RocCurve


def _new_figure(width: float, height: float) -> Any:
    # The object-oriented API with an explicit Agg canvas: no pyplot state, no backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def roc_figure(roc_curves: Mapping[str, RocCurve]) -> Any:
    """ROC curves (one per label, 'pooled*' drawn thicker), AUROC in the legend."""
    fig = _new_figure(6.0, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (0.500)")
    for label, curve in roc_curves.items():
        pooled = label.startswith("pooled")
        ax.plot(
            curve.fpr,
            curve.tpr,
            linewidth=2.5 if pooled else 1.2,
            alpha=1.0 if pooled else 0.75,
            drawstyle="default",
            label=f"{label} (AUROC {curve.auroc:.3f})",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def calibration_figure(
    calibration: CalibrationCurve, before: CalibrationCurve | None = None
) -> Any:
    """Reliability diagram (observed against predicted, with the diagonal, counts on the points)
    above a bar chart of slides per bin; `before`, the head's own probabilities before
    temperature scaling, drawn in grey beside them."""
    fig = _new_figure(6.0, 6.5)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfectly calibrated")
    if before is not None:
        shown = before.counts > 0
        top.plot(
            before.mean_predicted[shown],
            before.fraction_positive[shown],
            marker="s",
            color="0.55",
            linewidth=1,
            label=f"before temperature scaling (ECE {before.ece:.3f})",
        )
    filled = calibration.counts > 0
    x = calibration.mean_predicted[filled]
    y = calibration.fraction_positive[filled]
    top.plot(x, y, marker="o", linewidth=1.5, label=f"model (ECE {calibration.ece:.3f})")
    for xi, yi, n in zip(x, y, calibration.counts[filled], strict=True):
        top.annotate(f"n={int(n)}", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=8)
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("observed fraction positive")
    top.set_title("Reliability diagram")
    top.legend(loc="upper left", fontsize="small")
    edges = calibration.edges
    bottom.bar(
        edges[:-1], calibration.counts, width=np.diff(edges), align="edge", edgecolor="white"
    )
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("slides")
    return fig
