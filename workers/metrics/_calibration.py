"""Calibration: reliability bins, expected calibration error, and the Brier score."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics

from slidemill.schemas import ReliabilityBin
from slidemill.workers.errors import EvaluationError, UndefinedMetricError
from slidemill.workers.metrics._checks import (
    FloatArray,
    IntArray,
    check_binary_labels,
    check_class_labels,
    check_probabilities,
    check_scores,
    clamp_unit,
    frozen_array,
)


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
            object.__setattr__(self, name, frozen_array(getattr(self, name)))

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
                    mean_predicted=None if empty else clamp_unit(self.mean_predicted[i]),
                    fraction_positive=None if empty else clamp_unit(self.fraction_positive[i]),
                )
            )
        return tuple(out)


def calibration_curve(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> CalibrationCurve:
    """Reliability bins and expected calibration error of a probability of a binary event.

    y_true: (n,) 0/1 or bool, whether the event happened; prob: (n,) its predicted probability
    in [0, 1]. Equal-width bins, p in bin floor(p · n_bins) (1.0 in the last);
    ECE = Σ_i (n_i / n) · |observed_i − predicted_i|.
    """
    if n_bins < 1:
        raise EvaluationError(f"n_bins must be at least 1, got {n_bins}")
    p = check_scores(prob, "prob")
    y = check_binary_labels(y_true, p.shape[0])
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
        ece=clamp_unit(ece),
    )


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> float:
    """ECE of `calibration_curve` (equal-width bins)."""
    return calibration_curve(y_true, prob, n_bins).ece


def slide_calibration(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 10) -> CalibrationCurve:
    """Calibration of slide predictions. probs: (n, C).

    Two classes: P(class 1) against the slide being class 1. More: the top class's probability
    (the confidence) against the prediction being right (top-label calibration).
    """
    p = check_probabilities(probs)
    y = check_class_labels(y_true, p.shape[1], p.shape[0])
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
        p1 = check_scores(p_in, "probs")
        y1 = check_binary_labels(y_true, p1.shape[0])
        if p1.size and (p1.min() < 0.0 or p1.max() > 1.0):
            raise EvaluationError("probabilities must lie in [0, 1]")
        if p1.shape[0] == 0:
            raise UndefinedMetricError("the Brier score is undefined without samples")
        return float(metrics.brier_score_loss(y1, p1, pos_label=True))
    p = check_probabilities(p_in)
    y = check_class_labels(y_true, p.shape[1], p.shape[0])
    if p.shape[0] == 0:
        raise UndefinedMetricError("the Brier score is undefined without samples")
    if p.shape[1] == 2:
        return float(metrics.brier_score_loss(y == 1, p[:, 1], pos_label=True))
    with warnings.catch_warnings():
        # float32 softmax rows miss 1 by more than its sqrt(eps) tolerance; the sum is taken
        # over the probabilities as given either way
        warnings.filterwarnings("ignore", "The y_prob values do not sum to one")
        return float(metrics.brier_score_loss(y, p, labels=np.arange(p.shape[1])))


@dataclass(frozen=True, slots=True)
class TemperatureFit:
    """Temperature scaling fitted to slide predictions."""

    temperature: float
    """Logits are divided by this (> 1 softens over-confident probabilities)."""
    nll_before: float
    """Mean negative log-likelihood of the true class before."""
    nll_after: float
    """And after (never higher: T = 1 is among the candidates)."""


_EPS = 1e-12


def apply_temperature(probs: ArrayLike, temperature: float) -> FloatArray:
    """Probabilities (n, C) or (C,) rescaled as softmax(log p / T): the order of the classes'
    probabilities, and so every AUROC and the argmax, is unchanged."""
    if not temperature > 0:
        raise EvaluationError(f"temperature must be positive, got {temperature}")
    p = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.clip(p, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    result: FloatArray = out / out.sum(axis=-1, keepdims=True)
    return result


def _nll(y: IntArray, p: FloatArray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


TEMPERATURE_RANGE = (0.5, 20.0)
"""Temperatures `fit_temperature` considers. Out-of-fold predictions that separate the classes
perfectly would drive T toward 0 (certainty); sharpening is capped at 2x."""


def fit_temperature(y_true: ArrayLike, probs: ArrayLike) -> TemperatureFit:
    """The temperature in `TEMPERATURE_RANGE` minimising the mean negative log-likelihood of
    `probs` (n, C) against class indices `y_true` (n,): a grid over log T, then golden-section
    refinement (the loss is convex in 1/T)."""
    p = check_probabilities(probs)
    y = check_class_labels(y_true, p.shape[1], p.shape[0])
    if p.shape[0] == 0:
        raise UndefinedMetricError("temperature scaling needs predictions")

    def loss(log_t: float) -> float:
        return _nll(y, apply_temperature(p, float(np.exp(log_t))))

    grid = np.linspace(np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1]), 61)
    losses = [loss(g) for g in grid]
    k = int(np.argmin(losses))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    best = float((lo + hi) / 2.0)
    before = _nll(y, p)
    after = loss(best)
    if after > before:  # the identity is always available
        best, after = 0.0, before
    return TemperatureFit(float(np.exp(best)), before, after)
