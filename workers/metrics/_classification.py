"""Decision metrics: the confusion matrix, balanced accuracy, F1, and a decision threshold
chosen on validation data (Youden's J)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from slidemill.workers.errors import EvaluationError, UndefinedMetricError
from slidemill.workers.metrics._checks import IntArray, check_class_labels, check_probabilities
from slidemill.workers.metrics._ranking import roc_curve


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


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> IntArray:
    """Counts of (true, predicted) pairs. Shape: (n_classes, n_classes), rows = true class."""
    if n_classes < 2:
        raise EvaluationError(f"n_classes must be at least 2, got {n_classes}")
    t = check_class_labels(y_true, n_classes)
    p = check_class_labels(y_pred, n_classes, t.shape[0], "y_pred")
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
    p = check_probabilities(probs)
    if threshold is None:
        return np.argmax(p, axis=1).astype(np.int64)
    if p.shape[1] != 2:
        raise EvaluationError(f"a threshold needs two classes, the probabilities have {p.shape[1]}")
    if not math.isfinite(threshold):
        raise EvaluationError(f"threshold must be finite, got {threshold}")
    return (p[:, 1] >= threshold).astype(np.int64)
