"""Evaluation: slide-level and lesion-level metrics (pure functions over arrays), the
`EvaluationReport` built from them, and its rendering (JSON, two PNGs, a self-contained HTML page).

Conventions of every metric here:

- `y_true` holds integer class indices (or booleans for a binary target); `scores` and
  probabilities are finite floats. Shapes are checked; a wrong input raises `EvaluationError`.
- A metric that is undefined on the data given (AUROC with one class present, F1 of a class that
  never occurs, ...) raises `UndefinedMetricError`, never returns NaN.
- AUROC is the Mann–Whitney statistic: the probability that a random positive scores above a
  random negative, ties counted one half. It equals the trapezoidal area under `roc_curve`.

No I/O happens outside `render_report`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from slidemill.schemas import (
    ClassificationMetrics,
    ConfidenceInterval,
    EvaluationReport,
    FoldMetrics,
    LocalisationMetrics,
    ReliabilityBin,
    slidemill_version,
)
from slidemill.workers.errors import EvaluationError, UndefinedMetricError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


# --------------------------------------------------------------------------------------------
# value objects


def _frozen_array(a: NDArray[Any]) -> NDArray[Any]:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, slots=True, eq=False)
class RocCurve:
    """ROC curve points, from the strictest threshold to the most lenient (`eq=False`: arrays).

    Point k predicts positive when score >= `thresholds[k]`; point 0 is (0, 0) at +inf.
    """

    fpr: FloatArray
    """False positive rate per point. Shape: n_points, non-decreasing, from 0 to 1."""
    tpr: FloatArray
    """True positive rate per point. Shape: n_points, non-decreasing, from 0 to 1."""
    thresholds: FloatArray
    """Score threshold of each point (decreasing; the first is +inf). Shape: n_points."""
    auroc: float
    """Area under the curve (equals the Mann–Whitney AUROC)."""

    def __post_init__(self) -> None:
        for name in ("fpr", "tpr", "thresholds"):
            object.__setattr__(self, name, _frozen_array(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class OneVsRestAuroc:
    """One-vs-rest AUROC of every class and their macro mean."""

    per_class: tuple[float, ...]
    """AUROC of class c's probability against "true class is c". Length: n_classes."""
    macro: float
    """Unweighted mean of `per_class`."""


@dataclass(frozen=True, slots=True)
class Threshold:
    """A decision threshold chosen on validation data: predict positive when score >= value."""

    value: float
    """The threshold (midway between the chosen score and the next lower distinct score)."""
    youden_j: float
    """Youden's J = sensitivity + specificity − 1 at this threshold, in [−1, 1]."""
    sensitivity: float
    """True positive rate on the validation data at this threshold."""
    specificity: float
    """True negative rate on the validation data at this threshold."""


@dataclass(frozen=True, slots=True, eq=False)
class CalibrationCurve:
    """Reliability diagram: equal-width bins over [0, 1] (`eq=False`: arrays).

    Bin i holds probabilities p with floor(p · n_bins) = i, i.e. [edges[i], edges[i+1]); the
    last bin also holds 1.0.
    """

    edges: FloatArray
    """Bin edges. Shape: n_bins + 1, from 0 to 1."""
    counts: IntArray
    """Samples per bin. Shape: n_bins."""
    mean_predicted: FloatArray
    """Mean predicted probability per bin, NaN where the bin is empty. Shape: n_bins."""
    fraction_positive: FloatArray
    """Observed fraction of positives per bin, NaN where the bin is empty. Shape: n_bins."""
    ece: float
    """Expected calibration error: Σ_i counts[i]/n · |fraction_positive[i] − mean_predicted[i]|."""

    def __post_init__(self) -> None:
        for name in ("edges", "counts", "mean_predicted", "fraction_positive"):
            object.__setattr__(self, name, _frozen_array(getattr(self, name)))

    def bins(self) -> tuple[ReliabilityBin, ...]:
        """The bins as report entries (empty bins without means)."""
        out = []
        for i, count in enumerate(self.counts.tolist()):
            empty = count == 0
            out.append(
                ReliabilityBin(
                    lower=float(self.edges[i]),
                    upper=float(self.edges[i + 1]),
                    count=count,
                    mean_predicted=None if empty else _unit(self.mean_predicted[i]),
                    fraction_positive=None if empty else _unit(self.fraction_positive[i]),
                )
            )
        return tuple(out)


@dataclass(frozen=True, slots=True)
class BootstrapInterval:
    """A percentile bootstrap confidence interval."""

    estimate: float
    """The statistic on the data as given."""
    low: float
    """Lower percentile of the resampled statistics."""
    high: float
    """Upper percentile of the resampled statistics."""
    level: float
    """Coverage, e.g. 0.95."""
    n_resamples: int
    """Resamples drawn."""
    seed: int
    """Seed of `numpy.random.default_rng`."""


@dataclass(frozen=True, slots=True)
class LocalisationResult:
    """Tile-level AUROC of heatmap scores against annotated lesion tiles, over positive slides."""

    pooled_auroc: float
    """AUROC over all tiles of all slides together."""
    per_slide_auroc: Mapping[str, float]
    """Slide id → AUROC of that slide's tiles, for slides with both tile classes."""
    per_slide_mean_auroc: float | None
    """Mean of `per_slide_auroc`; None when every slide was skipped."""
    skipped: Mapping[str, str]
    """Slide id → why the slide has no AUROC of its own (all its tiles one class)."""
    n_tiles: int
    """Tiles over all slides."""
    n_lesion_tiles: int
    """Tiles whose lesion fraction is at least `lesion_fraction_threshold`."""
    lesion_fraction_threshold: float
    """A tile counts as lesion when its lesion fraction is at least this."""

    def to_metrics(self) -> LocalisationMetrics:
        """The report entry."""
        return LocalisationMetrics(
            lesion_fraction_threshold=self.lesion_fraction_threshold,
            n_slides=len(self.per_slide_auroc) + len(self.skipped),
            n_tiles=self.n_tiles,
            n_lesion_tiles=self.n_lesion_tiles,
            pooled_auroc=self.pooled_auroc,
            per_slide_mean_auroc=self.per_slide_mean_auroc,
            per_slide_auroc=dict(self.per_slide_auroc),
            skipped=dict(self.skipped),
        )


# --------------------------------------------------------------------------------------------
# input checks


def _scores_1d(scores: ArrayLike, name: str = "scores") -> FloatArray:
    a = np.asarray(scores)
    if a.ndim != 1:
        raise EvaluationError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        raise EvaluationError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise EvaluationError(f"{name} must be finite; {int((~np.isfinite(a)).sum())} are not")
    return a


def _binary_labels(y_true: ArrayLike, n: int | None = None, name: str = "y_true") -> BoolArray:
    a = np.asarray(y_true)
    if a.ndim != 1:
        raise EvaluationError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise EvaluationError(f"{name} has {a.shape[0]} entries, the scores {n}")
    if a.dtype == np.bool_:
        return a
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isin(a, (0, 1))):
        raise EvaluationError(f"{name} must hold only 0/1 or booleans")
    return a.astype(bool)


def _class_labels(
    y_true: ArrayLike, n_classes: int, n: int | None = None, name: str = "y_true"
) -> IntArray:
    a = np.asarray(y_true)
    if a.ndim != 1:
        raise EvaluationError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise EvaluationError(f"{name} has {a.shape[0]} entries, expected {n}")
    if a.dtype == np.bool_:
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise EvaluationError(f"{name} must hold integer class indices")
    if not np.all(a == np.round(a)):
        raise EvaluationError(f"{name} must hold integer class indices")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise EvaluationError(f"{name} must lie in [0, {n_classes}), got {a.min()}..{a.max()}")
    return a


def _probabilities(probs: ArrayLike) -> FloatArray:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] < 2:
        raise EvaluationError(f"probabilities must be (n_samples, n_classes ≥ 2), got {p.shape}")
    p = _scores_1d(p.ravel(), "probabilities").reshape(p.shape)
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise EvaluationError("probabilities must lie in [0, 1]")
    return p


def _unit(x: float | np.floating[Any]) -> float:
    """Clamp rounding error (e.g. 1.0000000000000002) into [0, 1]."""
    return min(1.0, max(0.0, float(x)))


# --------------------------------------------------------------------------------------------
# AUROC and ROC


def average_ranks(x: ArrayLike) -> FloatArray:
    """1-based ranks of `x`, tied values sharing the mean of their ranks. Shape: n → n."""
    v = _scores_1d(x, "x")
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    new_group = np.empty(v.shape[0], dtype=bool)
    new_group[:1] = True
    new_group[1:] = sorted_v[1:] != sorted_v[:-1]
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], v.shape[0])  # exclusive
    group_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(v.shape[0], dtype=np.float64)
    ranks[order] = group_rank[np.cumsum(new_group) - 1]
    return ranks


def _auroc_unchecked(positive: BoolArray, scores: FloatArray) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    ranks = average_ranks(scores)
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Binary AUROC (Mann–Whitney U / (n_pos · n_neg), ties counted one half).

    y_true: (n,) 0/1 or bool, 1 = positive. scores: (n,) finite, higher = more positive.
    Raises `UndefinedMetricError` when only one class is present.
    """
    s = _scores_1d(scores)
    y = _binary_labels(y_true, s.shape[0])
    n_pos = int(y.sum())
    if y.shape[0] == 0:
        raise UndefinedMetricError("AUROC is undefined without samples")
    if n_pos == 0 or n_pos == y.shape[0]:
        present = "positive" if n_pos else "negative"
        raise UndefinedMetricError(
            f"AUROC is undefined: all {y.shape[0]} samples are {present} (both classes needed)"
        )
    return _auroc_unchecked(y, s)


def roc_curve(y_true: ArrayLike, scores: ArrayLike) -> RocCurve:
    """ROC curve with one point per distinct score (tied scores move the curve diagonally).

    y_true: (n,) 0/1 or bool. scores: (n,). Raises `UndefinedMetricError` with one class.
    """
    s = _scores_1d(scores)
    y = _binary_labels(y_true, s.shape[0])
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        present = "positive" if n_pos else "negative"
        raise UndefinedMetricError(
            f"ROC curve is undefined: all {y.shape[0]} samples are {present}"
        )
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_group = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.shape[0] - 1)
    tps = np.cumsum(y_sorted)[last_of_group].astype(np.float64)
    fps = (last_of_group + 1) - tps
    tpr = np.concatenate(([0.0], tps / n_pos))
    fpr = np.concatenate(([0.0], fps / n_neg))
    thresholds = np.concatenate(([np.inf], s_sorted[last_of_group]))
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, auroc=_unit(area))


def one_vs_rest_auroc(y_true: ArrayLike, probs: ArrayLike) -> OneVsRestAuroc:
    """One-vs-rest AUROC per class and its macro mean.

    y_true: (n,) class indices in [0, C). probs: (n, C) class probabilities in [0, 1].
    Every class must be present in y_true: raises `UndefinedMetricError` naming a class that
    is absent from, or the only class in, y_true.
    """
    p = _probabilities(probs)
    y = _class_labels(y_true, p.shape[1], p.shape[0])
    per_class = []
    for c in range(p.shape[1]):
        positive = y == c
        n_pos = int(positive.sum())
        if n_pos == 0 or n_pos == y.shape[0]:
            why = "absent from" if n_pos == 0 else "the only class in"
            raise UndefinedMetricError(
                f"one-vs-rest AUROC of class {c} is undefined: the class is {why} y_true"
            )
        per_class.append(_auroc_unchecked(positive, p[:, c]))
    return OneVsRestAuroc(per_class=tuple(per_class), macro=float(np.mean(per_class)))


def slide_auroc(y_true: ArrayLike, probs: ArrayLike) -> float:
    """The headline slide AUROC: two classes, AUROC of P(class 1); more, the macro one-vs-rest.

    y_true: (n,) class indices. probs: (n, C).
    """
    p = _probabilities(probs)
    y = _class_labels(y_true, p.shape[1], p.shape[0])
    if p.shape[1] == 2:
        return auroc(y == 1, p[:, 1])
    return one_vs_rest_auroc(y, p).macro


def bootstrap_auroc_ci(
    y_true: ArrayLike,
    probs: ArrayLike,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap interval of `slide_auroc`, resampling slides within each true class.

    Stratified resampling (as pROC does by default) keeps every class in every resample, so each
    resampled AUROC is defined. y_true: (n,) class indices; probs: (n, C). Deterministic in `seed`.
    """
    if n_resamples < 1:
        raise EvaluationError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise EvaluationError(f"level must lie in (0, 1), got {level}")
    p = _probabilities(probs)
    y = _class_labels(y_true, p.shape[1], p.shape[0])
    estimate = slide_auroc(y, p)  # raises when undefined
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(y == c) for c in range(p.shape[1])]
    strata = [s for s in strata if s.size]
    stats = np.empty(n_resamples, dtype=np.float64)
    binary = p.shape[1] == 2
    for b in range(n_resamples):
        idx = np.concatenate([s[rng.integers(0, s.size, size=s.size)] for s in strata])
        yb, pb = y[idx], p[idx]
        if binary:
            stats[b] = _auroc_unchecked(yb == 1, pb[:, 1])
        else:
            stats[b] = np.mean([_auroc_unchecked(yb == c, pb[:, c]) for c in range(p.shape[1])])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapInterval(
        estimate=estimate,
        low=_unit(low),
        high=_unit(high),
        level=level,
        n_resamples=n_resamples,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# decisions: confusion matrix, balanced accuracy, F1, threshold


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> IntArray:
    """Counts of (true, predicted) pairs. Shape: (n_classes, n_classes), rows = true class."""
    if n_classes < 2:
        raise EvaluationError(f"n_classes must be at least 2, got {n_classes}")
    t = _class_labels(y_true, n_classes)
    p = _class_labels(y_pred, n_classes, t.shape[0], "y_pred")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def _check_nonempty(cm: IntArray) -> None:
    if cm.sum() == 0:
        raise UndefinedMetricError("no samples: the metric is undefined")


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> float:
    """Mean recall over the classes present in y_true (absent classes have no recall).

    y_true, y_pred: (n,) class indices in [0, n_classes). A constant prediction scores
    1 / (classes present); chance level for two classes is 0.5.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    _check_nonempty(cm)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _f1_from_cm(cm: IntArray, c: int) -> float | None:
    tp = int(cm[c, c])
    fp = int(cm[:, c].sum()) - tp
    fn = int(cm[c, :].sum()) - tp
    denominator = 2 * tp + fp + fn
    return None if denominator == 0 else 2 * tp / denominator


def f1_score(
    y_true: ArrayLike, y_pred: ArrayLike, *, positive: int = 1, n_classes: int = 2
) -> float:
    """F1 = 2·TP / (2·TP + FP + FN) of class `positive` (binary F1 with the defaults).

    Raises `UndefinedMetricError` when the class occurs neither in y_true nor in y_pred.
    """
    if not 0 <= positive < n_classes:
        raise EvaluationError(f"positive must lie in [0, {n_classes}), got {positive}")
    cm = confusion_matrix(y_true, y_pred, n_classes)
    f1 = _f1_from_cm(cm, positive)
    if f1 is None:
        raise UndefinedMetricError(
            f"F1 of class {positive} is undefined: it occurs in neither y_true nor y_pred"
        )
    return f1


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> float:
    """Mean F1 over the classes that occur in y_true or y_pred (F1 is undefined for the others)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    _check_nonempty(cm)
    values = [f for c in range(n_classes) if (f := _f1_from_cm(cm, c)) is not None]
    return float(np.mean(values))


def choose_threshold(y_true: ArrayLike, scores: ArrayLike) -> Threshold:
    """Youden's J: the threshold maximising sensitivity + specificity − 1 on validation data.

    Rule: predict positive when score >= threshold. Among thresholds with equal J the strictest
    (highest) wins. The value returned lies midway between the chosen score and the next lower
    distinct score, so it keeps a margin on both sides. y_true: (n,) 0/1; scores: (n,).
    Raises `UndefinedMetricError` with one class.
    """
    curve = roc_curve(y_true, scores)
    j = curve.tpr[1:] - curve.fpr[1:]  # skip the +inf point: it predicts nothing positive
    k = int(np.argmax(j)) + 1
    chosen = float(curve.thresholds[k])
    value = chosen
    if k + 1 < curve.thresholds.shape[0]:
        lower = float(curve.thresholds[k + 1])
        mid = chosen / 2.0 + lower / 2.0
        if lower < mid < chosen:
            value = mid
    return Threshold(
        value=value,
        youden_j=float(j[k - 1]),
        sensitivity=float(curve.tpr[k]),
        specificity=float(1.0 - curve.fpr[k]),
    )


def predict_labels(probs: ArrayLike, threshold: float | None = None) -> IntArray:
    """Predicted class per sample. probs: (n, C) → (n,) class indices.

    With a threshold (two classes only): class 1 when P(class 1) >= threshold, else 0.
    Without: the most probable class (the lowest index on a tie).
    """
    p = _probabilities(probs)
    if threshold is None:
        return np.argmax(p, axis=1).astype(np.int64)
    if p.shape[1] != 2:
        raise EvaluationError(f"a threshold needs two classes, the probabilities have {p.shape[1]}")
    if not math.isfinite(threshold):
        raise EvaluationError(f"threshold must be finite, got {threshold}")
    return (p[:, 1] >= threshold).astype(np.int64)


# --------------------------------------------------------------------------------------------
# calibration


def calibration_curve(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> CalibrationCurve:
    """Reliability bins and expected calibration error of a probability of a binary event.

    y_true: (n,) 0/1 or bool, whether the event happened; prob: (n,) its predicted probability
    in [0, 1]. Equal-width bins, p in bin floor(p · n_bins) (1.0 in the last);
    ECE = Σ_i (n_i / n) · |observed_i − predicted_i|.
    """
    if n_bins < 1:
        raise EvaluationError(f"n_bins must be at least 1, got {n_bins}")
    p = _scores_1d(prob, "prob")
    y = _binary_labels(y_true, p.shape[0])
    if p.shape[0] == 0:
        raise UndefinedMetricError("calibration is undefined without samples")
    if p.min() < 0.0 or p.max() > 1.0:
        raise EvaluationError("prob must lie in [0, 1]")
    edges = np.arange(n_bins + 1) / n_bins  # exact decimals: 7/10 is the float nearest 0.7
    # floor(p · n_bins), so 0.7 lands in [0.7, 0.8) (bisecting linspace edges puts it lower)
    idx = np.minimum(np.floor(p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sum_p / counts, np.nan)
        fraction_positive = np.where(counts > 0, sum_y / counts, np.nan)
    ece = float(np.sum(np.abs(sum_y - sum_p)) / p.shape[0])
    return CalibrationCurve(
        edges=edges,
        counts=counts,
        mean_predicted=mean_predicted,
        fraction_positive=fraction_positive,
        ece=_unit(ece),
    )


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> float:
    """ECE of `calibration_curve` (equal-width bins)."""
    return calibration_curve(y_true, prob, n_bins).ece


def slide_calibration(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 10) -> CalibrationCurve:
    """Calibration of slide predictions. probs: (n, C).

    Two classes: P(class 1) against the slide being class 1. More: the top class's probability
    (the confidence) against the prediction being right (top-label calibration).
    """
    p = _probabilities(probs)
    y = _class_labels(y_true, p.shape[1], p.shape[0])
    if p.shape[1] == 2:
        return calibration_curve(y == 1, p[:, 1], n_bins)
    top = np.argmax(p, axis=1)
    return calibration_curve(top == y, p[np.arange(p.shape[0]), top], n_bins)


def brier_score(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Brier score. probs: (n,) P(positive) with y_true 0/1 → mean (p − y)², in [0, 1];
    or (n, C) with y_true class indices → two classes, the binary score of column 1; more,
    mean over samples of Σ_c (p_c − [y = c])², in [0, 2].
    """
    p_in = np.asarray(probs)
    if p_in.ndim == 1:
        p1 = _scores_1d(p_in, "probs")
        y1 = _binary_labels(y_true, p1.shape[0])
        if p1.size and (p1.min() < 0.0 or p1.max() > 1.0):
            raise EvaluationError("probabilities must lie in [0, 1]")
        if p1.shape[0] == 0:
            raise UndefinedMetricError("the Brier score is undefined without samples")
        return float(np.mean((p1 - y1) ** 2))
    p = _probabilities(p_in)
    y = _class_labels(y_true, p.shape[1], p.shape[0])
    if p.shape[0] == 0:
        raise UndefinedMetricError("the Brier score is undefined without samples")
    if p.shape[1] == 2:
        return float(np.mean((p[:, 1] - (y == 1)) ** 2))
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# --------------------------------------------------------------------------------------------
# lesion localisation


def localisation_auroc(
    slides: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    lesion_fraction_threshold: float = 0.5,
) -> LocalisationResult:
    """How well tile scores find the annotated lesion on positive slides.

    slides: slide id → (tile scores (n_tiles,), lesion fraction of each tile (n_tiles,) in
    [0, 1]); give only positive slides with lesion annotations. A tile is lesion when its
    fraction is >= `lesion_fraction_threshold`. Returns the AUROC over all tiles pooled, and per
    slide (with their mean); a slide whose tiles are all one class is skipped with its reason.
    Raises `UndefinedMetricError` when the pooled tiles are all one class.
    """
    if not 0.0 < lesion_fraction_threshold <= 1.0:
        raise EvaluationError(
            f"lesion_fraction_threshold must lie in (0, 1], got {lesion_fraction_threshold}"
        )
    if not slides:
        raise EvaluationError("localisation needs at least one slide")
    all_scores: list[FloatArray] = []
    all_lesion: list[BoolArray] = []
    per_slide: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for slide_id, (scores, fractions) in slides.items():
        s = _scores_1d(scores, f"{slide_id}: tile scores")
        f = _scores_1d(fractions, f"{slide_id}: lesion fractions")
        if f.shape != s.shape:
            raise EvaluationError(
                f"{slide_id}: {s.shape[0]} tile scores but {f.shape[0]} lesion fractions"
            )
        if s.shape[0] == 0:
            raise EvaluationError(f"{slide_id}: no tiles")
        if f.min() < 0.0 or f.max() > 1.0:
            raise EvaluationError(f"{slide_id}: lesion fractions must lie in [0, 1]")
        lesion = f >= lesion_fraction_threshold
        n_lesion = int(lesion.sum())
        if n_lesion == 0:
            skipped[slide_id] = (
                f"no lesion tile: all {s.shape[0]} tiles have lesion fraction "
                f"< {lesion_fraction_threshold:g}"
            )
        elif n_lesion == s.shape[0]:
            skipped[slide_id] = (
                f"no non-lesion tile: all {s.shape[0]} tiles have lesion fraction "
                f">= {lesion_fraction_threshold:g}"
            )
        else:
            per_slide[slide_id] = _auroc_unchecked(lesion, s)
        all_scores.append(s)
        all_lesion.append(lesion)
    pooled_lesion = np.concatenate(all_lesion)
    try:
        pooled = auroc(pooled_lesion, np.concatenate(all_scores))
    except UndefinedMetricError as err:
        raise UndefinedMetricError(f"localisation AUROC: {err}") from err
    return LocalisationResult(
        pooled_auroc=pooled,
        per_slide_auroc=per_slide,
        per_slide_mean_auroc=float(np.mean(list(per_slide.values()))) if per_slide else None,
        skipped=skipped,
        n_tiles=int(pooled_lesion.shape[0]),
        n_lesion_tiles=int(pooled_lesion.sum()),
        lesion_fraction_threshold=lesion_fraction_threshold,
    )


# --------------------------------------------------------------------------------------------
# the report


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
        p = _probabilities(self.probabilities)
        y = _class_labels(self.y_true, p.shape[1], p.shape[0])
        if len(self.slide_ids) != p.shape[0]:
            raise EvaluationError(
                f"fold {self.name}: {len(self.slide_ids)} slide ids for {p.shape[0]} predictions"
            )
        object.__setattr__(self, "probabilities", _frozen_array(p))
        object.__setattr__(self, "y_true", _frozen_array(y))
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
    p = _probabilities(probs)
    n_classes = p.shape[1]
    y = _class_labels(y_true, n_classes, p.shape[0])
    if y.shape[0] == 0:
        raise UndefinedMetricError("no slides to evaluate")
    pred = (
        predict_labels(p, threshold)
        if y_pred is None
        else _class_labels(y_pred, n_classes, len(y), "y_pred")
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
        auroc=_unit(headline),
        auroc_per_class=tuple(_unit(v) for v in ovr.per_class),
        auroc_ci=ci,
        balanced_accuracy=_unit(balanced_accuracy(y, pred, n_classes)),
        f1=_unit(f1_score(y, pred, positive=1)) if n_classes == 2 else None,
        macro_f1=_unit(macro_f1(y, pred, n_classes)),
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


# --------------------------------------------------------------------------------------------
# rendering (the only I/O)

REPORT_FILES = ("evaluation.json", "roc.png", "calibration.png", "report.html")


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _write_text(path: Path, text: str) -> None:
    tmp = _tmp_for(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _save_figure(fig: Any, path: Path) -> None:
    tmp = _tmp_for(path)
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)


def _new_figure(width: float, height: float) -> Any:
    # The object-oriented API with an explicit Agg canvas: no pyplot state, no backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_roc(roc_curves: Mapping[str, RocCurve], path: Path) -> None:
    """ROC curves (one per label, 'pooled*' drawn thicker), AUROC in the legend; PNG at `path`."""
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
    _save_figure(fig, path)


def plot_calibration(calibration: CalibrationCurve, path: Path) -> None:
    """Reliability diagram (observed against predicted, with the diagonal, counts on the points)
    above a bar chart of slides per bin; PNG at `path`."""
    fig = _new_figure(6.0, 6.5)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfectly calibrated")
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
    _save_figure(fig, path)


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
    loc = r.localisation
    if loc is not None:
        parts += [
            "<h2>Lesion localisation</h2>",
            f"<p>Tile AUROC against lesion fraction ≥ {_num(loc.lesion_fraction_threshold, 2)}"
            f" over {_e(loc.n_slides)} slides ({_e(loc.n_tiles)} tiles, {_e(loc.n_lesion_tiles)}"
            f" lesion): pooled <b>{_num(loc.pooled_auroc)}</b>, mean per slide "
            f"<b>{_num(loc.per_slide_mean_auroc)}</b>.</p>",
            _table(
                ["slide", "AUROC", "note"],
                [[_e(s), _num(a), ""] for s, a in sorted(loc.per_slide_auroc.items())]
                + [[_e(s), "—", _e(why)] for s, why in sorted(loc.skipped.items())],
            ),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_report(
    report: EvaluationReport,
    roc_curves: Mapping[str, RocCurve],
    calibration: CalibrationCurve,
    out_dir: Path,
) -> dict[str, Path]:
    """Write `evaluation.json`, `roc.png`, `calibration.png` and `report.html` into `out_dir`,
    each under a temporary name then renamed; the page last, so the images it names exist.

    Returns file name → path written.
    """
    if not roc_curves:
        raise EvaluationError("render_report needs at least one ROC curve")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in REPORT_FILES}
    plot_roc(roc_curves, paths["roc.png"])
    plot_calibration(calibration, paths["calibration.png"])
    _write_text(paths["evaluation.json"], report.model_dump_json(indent=2) + "\n")
    _write_text(paths["report.html"], render_html(report))
    return paths


__all__ = [
    "REPORT_FILES",
    "BootstrapInterval",
    "CalibrationCurve",
    "Evaluation",
    "EvaluationError",
    "FoldPredictions",
    "LocalisationResult",
    "OneVsRestAuroc",
    "RocCurve",
    "Threshold",
    "UndefinedMetricError",
    "auroc",
    "average_ranks",
    "balanced_accuracy",
    "bootstrap_auroc_ci",
    "brier_score",
    "calibration_curve",
    "choose_threshold",
    "classification_metrics",
    "confusion_matrix",
    "evaluate",
    "expected_calibration_error",
    "f1_score",
    "localisation_auroc",
    "macro_f1",
    "one_vs_rest_auroc",
    "plot_calibration",
    "plot_roc",
    "predict_labels",
    "render_html",
    "render_report",
    "roc_curve",
    "slide_auroc",
]
