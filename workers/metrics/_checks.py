"""Input checks shared by every metric: shapes, dtypes and ranges, each refused with an
`EvaluationError` that names the argument."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from slidemill.workers.errors import EvaluationError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def frozen_array(a: NDArray[Any]) -> NDArray[Any]:
    """A read-only copy of `a`, for the array fields of frozen value objects."""
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def check_scores(scores: ArrayLike, name: str = "scores") -> FloatArray:
    """`scores` as a finite float64 vector. Shape: n."""
    a = np.asarray(scores)
    if a.ndim != 1:
        raise EvaluationError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        raise EvaluationError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise EvaluationError(f"{name} must be finite; {int((~np.isfinite(a)).sum())} are not")
    return a


def check_binary_labels(y_true: ArrayLike, n: int | None = None, name: str = "y_true") -> BoolArray:
    """0/1 or boolean labels as a bool vector, of length `n` when given. Shape: n."""
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


def check_class_labels(
    y_true: ArrayLike, n_classes: int, n: int | None = None, name: str = "y_true"
) -> IntArray:
    """Integer class indices in [0, n_classes), of length `n` when given. Shape: n."""
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


def check_probabilities(probs: ArrayLike) -> FloatArray:
    """Class probabilities in [0, 1], at least two classes. Shape: n_samples x n_classes."""
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] < 2:
        raise EvaluationError(f"probabilities must be (n_samples, n_classes ≥ 2), got {p.shape}")
    p = check_scores(p.ravel(), "probabilities").reshape(p.shape)
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise EvaluationError("probabilities must lie in [0, 1]")
    return p


def clamp_unit(x: float | np.floating[Any]) -> float:
    """Clamp rounding error (e.g. 1.0000000000000002) into [0, 1]."""
    return min(1.0, max(0.0, float(x)))
