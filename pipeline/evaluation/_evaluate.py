"""The evaluation of test folds: every slide-level figure of each fold and of all folds pooled,
with the ROC and reliability curves the report draws. Pure: the metrics come from
`slidemill.workers.metrics`, and nothing here reads or writes files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from slidemill.schemas import (
    ClassificationMetrics,
    ConfidenceInterval,
    EvaluationReport,
    FoldMetrics,
    slidemill_version,
)
from slidemill.workers.metrics import (
    CalibrationCurve,
    EvaluationError,
    LocalisationResult,
    RocCurve,
    UndefinedMetricError,
    balanced_accuracy,
    bootstrap_auroc_ci,
    brier_score,
    check_class_labels,
    check_probabilities,
    clamp_unit,
    confusion_matrix,
    f1_score,
    frozen_array,
    macro_f1,
    one_vs_rest_auroc,
    predict_labels,
    roc_curve,
    slide_auroc,
    slide_calibration,
)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class FoldPredictions:
    """Out-of-fold slide predictions of one test fold (`eq=False`: arrays)."""

    name: str
    """Fold name, e.g. 'fold-0'."""
    slide_ids: tuple[str, ...]
    """Slide ids, one per row. Length: n_slides."""
    y_true: IntArray
    """True class index per slide. Shape: n_slides."""
    probabilities: FloatArray
    """Predicted class probabilities. Shape: n_slides x n_classes."""
    threshold: float | None = None
    """Two classes: the model bundle's decision threshold on P(class 1); None = argmax."""
    model_sha256: str | None = None
    """The id of the bundle that scored this fold, when each fold has its own model."""

    def __post_init__(self) -> None:
        p = check_probabilities(self.probabilities)
        y = check_class_labels(self.y_true, p.shape[1], p.shape[0])
        if len(self.slide_ids) != p.shape[0]:
            raise EvaluationError(
                f"fold {self.name}: {len(self.slide_ids)} slide ids for {p.shape[0]} predictions"
            )
        object.__setattr__(self, "probabilities", frozen_array(p))
        object.__setattr__(self, "y_true", frozen_array(y))
        object.__setattr__(self, "slide_ids", tuple(self.slide_ids))


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What `evaluate` returns: the report and the curves `render_report` draws."""

    report: EvaluationReport
    """The figures, as written to `evaluation.json`."""
    roc_curves: Mapping[str, RocCurve]
    """Label → curve: each fold and 'pooled' (two classes), or 'pooled: <class>' one-vs-rest."""
    calibration: CalibrationCurve
    """Reliability bins of the pooled predictions."""


def classification_metrics(
    y_true: ArrayLike,
    probs: ArrayLike,
    *,
    threshold: float | None = None,
    y_pred: ArrayLike | None = None,
    n_bins: int = 10,
    bootstrap_resamples: int = 0,
    level: float = 0.95,
    seed: int = 0,
) -> ClassificationMetrics:
    """Every slide-level figure of one set of slides.

    y_true: (n,) class indices; probs: (n, C). Predictions are `y_pred` when given (pooled
    folds, each predicted with its own threshold), else `predict_labels(probs, threshold)`.
    `bootstrap_resamples` > 0 adds a confidence interval of the AUROC.
    """
    p = check_probabilities(probs)
    n_classes = p.shape[1]
    y = check_class_labels(y_true, n_classes, p.shape[0])
    if y.shape[0] == 0:
        raise UndefinedMetricError("no slides to evaluate")
    pred = (
        predict_labels(p, threshold)
        if y_pred is None
        else check_class_labels(y_pred, n_classes, len(y), "y_pred")
    )
    ovr = one_vs_rest_auroc(y, p)
    headline = slide_auroc(y, p)
    ci = None
    if bootstrap_resamples > 0:
        interval = bootstrap_auroc_ci(y, p, n_resamples=bootstrap_resamples, level=level, seed=seed)
        ci = ConfidenceInterval(
            low=interval.low,
            high=interval.high,
            level=level,
            n_resamples=bootstrap_resamples,
            seed=seed,
        )
    cm = confusion_matrix(y, pred, n_classes)
    calibration = slide_calibration(y, p, n_bins)
    return ClassificationMetrics(
        n_slides=int(y.shape[0]),
        n_slides_per_class=tuple(int(v) for v in np.bincount(y, minlength=n_classes)),
        auroc=clamp_unit(headline),
        auroc_per_class=tuple(clamp_unit(v) for v in ovr.per_class),
        auroc_ci=ci,
        balanced_accuracy=clamp_unit(balanced_accuracy(y, pred, n_classes)),
        f1=clamp_unit(f1_score(y, pred, positive=1)) if n_classes == 2 else None,
        macro_f1=clamp_unit(macro_f1(y, pred, n_classes)),
        confusion_matrix=tuple(tuple(int(v) for v in row) for row in cm),
        threshold=threshold,
        ece=calibration.ece,
        brier=brier_score(y, p),
        calibration_target="positive_class" if n_classes == 2 else "top_label",
        reliability=calibration.bins(),
    )


def evaluate(
    folds: Sequence[FoldPredictions],
    class_names: Sequence[str],
    model_sha256: str,
    *,
    localisation: LocalisationResult | None = None,
    n_bins: int = 10,
    bootstrap_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Evaluation:
    """The report over test folds: each fold's figures and all folds pooled, with the curves.

    A slide may appear in one fold only (a slide in two test folds means the folds leak).
    Raises `UndefinedMetricError` naming the fold whose figures are undefined (e.g. one class).
    """
    if not folds:
        raise EvaluationError("evaluation needs at least one fold")
    names = tuple(class_names)
    n_classes = len(names)
    seen: dict[str, str] = {}
    for fold in folds:
        if fold.probabilities.shape[1] != n_classes:
            raise EvaluationError(
                f"fold {fold.name}: {fold.probabilities.shape[1]} probability columns for "
                f"{n_classes} classes"
            )
        if fold.threshold is not None and n_classes != 2:
            raise EvaluationError(f"fold {fold.name}: a threshold needs two classes")
        for slide_id in fold.slide_ids:
            if slide_id in seen:
                raise EvaluationError(
                    f"slide {slide_id} is in fold {seen[slide_id]} and fold {fold.name}"
                )
            seen[slide_id] = fold.name
    fold_metrics = []
    curves: dict[str, RocCurve] = {}
    for fold in folds:
        try:
            m = classification_metrics(
                fold.y_true,
                fold.probabilities,
                threshold=fold.threshold,
                n_bins=n_bins,
                bootstrap_resamples=bootstrap_resamples,
                level=level,
                seed=seed,
            )
        except UndefinedMetricError as err:
            raise UndefinedMetricError(f"fold {fold.name}: {err}") from err
        fold_metrics.append(FoldMetrics(fold=fold.name, model_sha256=fold.model_sha256, **dict(m)))
        if n_classes == 2:
            curves[fold.name] = roc_curve(fold.y_true == 1, fold.probabilities[:, 1])
    y = np.concatenate([f.y_true for f in folds])
    p = np.concatenate([f.probabilities for f in folds])
    pred = np.concatenate([predict_labels(f.probabilities, f.threshold) for f in folds])
    thresholds = {f.threshold for f in folds}
    pooled = classification_metrics(
        y,
        p,
        threshold=thresholds.pop() if len(thresholds) == 1 else None,
        y_pred=pred,
        n_bins=n_bins,
        bootstrap_resamples=bootstrap_resamples,
        level=level,
        seed=seed,
    )
    if n_classes == 2:
        curves["pooled"] = roc_curve(y == 1, p[:, 1])
    else:
        for c, name in enumerate(names):
            curves[f"pooled: {name}"] = roc_curve(y == c, p[:, c])
    report = EvaluationReport(
        model_sha256=model_sha256,
        slidemill_version=slidemill_version(),
        class_names=names,
        positive_class=names[1] if n_classes == 2 else None,
        folds=tuple(fold_metrics),
        pooled=pooled,
        localisation=None if localisation is None else localisation.to_metrics(),
    )
    return Evaluation(report=report, roc_curves=curves, calibration=slide_calibration(y, p, n_bins))
