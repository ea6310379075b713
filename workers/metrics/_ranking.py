"""Ranking metrics: AUROC (binary, one-vs-rest, the headline slide AUROC), the ROC curve, and a
stratified bootstrap interval of the AUROC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import mannwhitneyu, rankdata
from sklearn import metrics

from slidemill.workers.errors import EvaluationError, UndefinedMetricError
from slidemill.workers.metrics._checks import (
    BoolArray,
    FloatArray,
    check_binary_labels,
    check_class_labels,
    check_probabilities,
    check_scores,
    clamp_unit,
    frozen_array,
)


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
            object.__setattr__(self, name, frozen_array(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class OneVsRestAuroc:
    """One-vs-rest AUROC of every class and their macro mean."""

    per_class: tuple[float, ...]
    """AUROC of class c's probability against "true class is c". Length: n_classes."""
    macro: float
    """Unweighted mean of `per_class`."""


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


def average_ranks(x: ArrayLike) -> FloatArray:
    """1-based ranks of `x`, tied values sharing the mean of their ranks. Shape: n → n."""
    ranks: FloatArray = rankdata(check_scores(x, "x"), method="average")
    return ranks


def _auroc_unchecked(positive: BoolArray, scores: FloatArray) -> float:
    # both classes are present: callers check, so scikit-learn's own error never shows
    return float(metrics.roc_auc_score(positive, scores))


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Binary AUROC (Mann–Whitney U / (n_pos · n_neg), ties counted one half).

    y_true: (n,) 0/1 or bool, 1 = positive. scores: (n,) finite, higher = more positive.
    Raises `UndefinedMetricError` when only one class is present.
    """
    s = check_scores(scores)
    y = check_binary_labels(y_true, s.shape[0])
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
    s = check_scores(scores)
    y = check_binary_labels(y_true, s.shape[0])
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        present = "positive" if n_pos else "negative"
        raise UndefinedMetricError(
            f"ROC curve is undefined: all {y.shape[0]} samples are {present}"
        )
    # one point per distinct score (the default drops collinear ones): choose_threshold and the
    # report want every threshold
    fpr, tpr, thresholds = metrics.roc_curve(y, s, drop_intermediate=False)
    area = metrics.auc(fpr, tpr)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, auroc=clamp_unit(area))


def one_vs_rest_auroc(y_true: ArrayLike, probs: ArrayLike) -> OneVsRestAuroc:
    """One-vs-rest AUROC per class and its macro mean.

    y_true: (n,) class indices in [0, C). probs: (n, C) class probabilities in [0, 1].
    Every class must be present in y_true: raises `UndefinedMetricError` naming a class that
    is absent from, or the only class in, y_true.
    """
    p = check_probabilities(probs)
    y = check_class_labels(y_true, p.shape[1], p.shape[0])
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
    p = check_probabilities(probs)
    y = check_class_labels(y_true, p.shape[1], p.shape[0])
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
    p = check_probabilities(probs)
    y = check_class_labels(y_true, p.shape[1], p.shape[0])
    estimate = slide_auroc(y, p)  # raises when undefined
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(y == c) for c in range(p.shape[1])]
    strata = [s for s in strata if s.size]
    idx = np.stack(
        [
            np.concatenate([s[rng.integers(0, s.size, size=s.size)] for s in strata])
            for _ in range(n_resamples)
        ]
    )
    # Every resample lists its slides class by class, the same classes in the same places, so
    # each class's AUROC over all resamples is one vectorised Mann–Whitney U (a call of
    # roc_auc_score per resample is many times slower).
    y_rows, pb = y[idx[0]], p[idx]  # (n,), (n_resamples, n, C)
    classes = [1] if p.shape[1] == 2 else range(p.shape[1])
    per_class = []
    for c in classes:
        positive = y_rows == c
        u = mannwhitneyu(pb[:, positive, c], pb[:, ~positive, c], axis=1).statistic
        per_class.append(u / (positive.sum() * (~positive).sum()))
    stats = np.mean(per_class, axis=0)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapInterval(
        estimate=estimate,
        low=clamp_unit(low),
        high=clamp_unit(high),
        level=level,
        n_resamples=n_resamples,
        seed=seed,
    )
