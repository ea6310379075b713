"""The metrics against hand-computed values and properties: AUROC and ROC, decisions and
thresholds, calibration, lesion localisation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slidemill.workers import WorkerError
from slidemill.workers.metrics import (
    EvaluationError,
    UndefinedMetricError,
    auroc,
    average_ranks,
    balanced_accuracy,
    bootstrap_auroc_ci,
    brier_score,
    calibration_curve,
    choose_threshold,
    confusion_matrix,
    expected_calibration_error,
    f1_score,
    localisation_auroc,
    macro_f1,
    one_vs_rest_auroc,
    predict_labels,
    roc_curve,
    slide_auroc,
    slide_calibration,
)

PROPS = settings(max_examples=120, deadline=None)


def brute_force_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """P(positive scores above negative) + ½ P(tie), over every pair."""
    pos, neg = s[y.astype(bool)], s[~y.astype(bool)]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@st.composite
def labelled_scores(draw: st.DrawFn, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels with both classes, and scores (small integers, so many ties, or distinct
    floats)."""
    rest = draw(st.lists(st.booleans(), max_size=38))
    y = np.array([True, False, *rest])
    values = (
        st.lists(st.integers(-5, 5), min_size=y.size, max_size=y.size)
        if ties
        else st.lists(
            st.floats(-1e6, 1e6, allow_nan=False), min_size=y.size, max_size=y.size, unique=True
        )
    )
    return y, np.array(draw(values), dtype=np.float64)


# ---------------------------------------------------------------------------------- AUROC


def test_auroc_hand_computed_values() -> None:
    # Four pairs; the positive 0.35 loses to the negative 0.4: 3/4.
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # A positive tied with a negative counts one half: (0.5 + 1 + 1 + 1) / 4.
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
    assert auroc([1, 0, 1, 0], [3.0, 3.0, 3.0, 3.0]) == 0.5
    assert auroc([0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.5]) == 1.0
    assert auroc([1, 1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5]) == 0.0
    assert auroc(np.array([False, True, True]), [2, 1, 3]) == 0.5
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


def test_auroc_undefined_and_bad_inputs_raise_typed_errors() -> None:
    with pytest.raises(UndefinedMetricError, match="all 3 samples are positive"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(UndefinedMetricError, match="negative"):
        auroc([0, 0], [0.1, 0.2])
    with pytest.raises(UndefinedMetricError):
        auroc([], [])
    with pytest.raises(EvaluationError, match="finite"):
        auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(EvaluationError, match="0/1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(EvaluationError, match="entries"):
        auroc([0, 1, 1], [0.1, 0.2])
    assert issubclass(UndefinedMetricError, EvaluationError)
    assert issubclass(EvaluationError, WorkerError)  # under the one root, not a ValueError


@PROPS
@given(labelled_scores())
def test_auroc_is_the_pairwise_probability_with_ties(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    assert auroc(y, s) == pytest.approx(brute_force_auroc(y, s), abs=1e-12)


@PROPS
@given(labelled_scores(ties=False))
def test_negating_scores_mirrors_auroc_without_ties(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    assert auroc(y, s) == pytest.approx(1.0 - auroc(y, -s), abs=1e-12)


@PROPS
@given(labelled_scores(ties=True))
def test_negating_scores_mirrors_auroc_with_ties(data: tuple[np.ndarray, np.ndarray]) -> None:
    # Holds only when ties count one half on both sides (counting them 0 gives 1 − P(tie)).
    y, s = data
    assert auroc(y, s) + auroc(y, -s) == pytest.approx(1.0, abs=1e-12)


@PROPS
@given(labelled_scores(ties=True), st.sampled_from(["cube", "exp", "arctan", "affine"]))
def test_auroc_is_invariant_under_strictly_increasing_transforms(
    data: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    y, s = data
    transforms: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "cube": lambda v: v**3,
        "exp": lambda v: np.exp(v / 3.0),
        "arctan": lambda v: np.arctan(v),
        "affine": lambda v: 2.5 * v - 7.0,
    }
    transform = transforms[name]
    assert auroc(y, transform(s)) == auroc(y, s)


@PROPS
@given(labelled_scores(ties=True))
def test_roc_curve_area_equals_mann_whitney(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    curve = roc_curve(y, s)
    assert curve.auroc == pytest.approx(auroc(y, s), abs=1e-12)
    assert curve.fpr[0] == curve.tpr[0] == 0.0
    assert curve.fpr[-1] == curve.tpr[-1] == 1.0
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.tpr) >= 0)
    assert np.all(np.diff(curve.thresholds) < 0)


def test_roc_curve_points() -> None:
    curve = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(curve.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curve.tpr, [0, 0.5, 0.5, 1, 1])
    # A tie between a positive and a negative moves the curve diagonally, in one step.
    tied = roc_curve([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])
    np.testing.assert_allclose(tied.fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tied.tpr, [0, 0.5, 1, 1])
    assert tied.auroc == 0.875
    with pytest.raises(ValueError, match="read-only"):
        curve.fpr[0] = 1.0


def test_multiclass_one_vs_rest_auroc() -> None:
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.35, 0.5, 0.15]])
    ovr = one_vs_rest_auroc(y, probs)
    # Class 2 scores [.1, .2, .4, .15]: .4 beats both negatives, .15 beats one → 3/4.
    assert ovr.per_class == (1.0, 1.0, 0.75)
    assert ovr.macro == pytest.approx(2.75 / 3)
    assert slide_auroc(y, probs) == pytest.approx(2.75 / 3)
    with pytest.raises(UndefinedMetricError, match="class 2"):
        one_vs_rest_auroc([0, 1, 1, 0], probs)
    with pytest.raises(EvaluationError, match=r"\[0, 3\)"):
        one_vs_rest_auroc([0, 1, 3, 2], probs)


@PROPS
@given(labelled_scores(ties=True))
def test_two_class_macro_auroc_equals_binary_auroc(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    p1 = (s + 5.0) / 10.0
    probs = np.stack([1.0 - p1, p1], axis=1)
    ovr = one_vs_rest_auroc(y.astype(int), probs)
    assert ovr.macro == pytest.approx(auroc(y, p1), abs=1e-12)
    assert slide_auroc(y.astype(int), probs) == auroc(y, p1)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    p1 = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, y.size), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    a = bootstrap_auroc_ci(y, probs, n_resamples=300, seed=7)
    b = bootstrap_auroc_ci(y, probs, n_resamples=300, seed=7)
    c = bootstrap_auroc_ci(y, probs, n_resamples=300, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low < a.estimate < a.high
    assert a.estimate == slide_auroc(y, probs)
    assert 0.0 < a.high - a.low < 0.5
    separable = np.stack([1 - y * 0.9, y * 0.9], axis=1).astype(float)
    perfect = bootstrap_auroc_ci(y, separable, n_resamples=50)
    assert perfect.low == perfect.high == 1.0
    with pytest.raises(EvaluationError, match="level"):
        bootstrap_auroc_ci(y, probs, level=1.0)


# ---------------------------------------------------------------- decisions and calibration


def test_confusion_balanced_accuracy_and_f1_hand_computed() -> None:
    y, pred = [1, 1, 0, 0, 1], [1, 0, 1, 0, 1]
    np.testing.assert_array_equal(confusion_matrix(y, pred, 2), [[1, 1], [1, 2]])
    assert f1_score(y, pred) == pytest.approx(4 / 6)  # TP 2, FP 1, FN 1
    assert f1_score(y, pred, positive=0) == pytest.approx(2 / 4)  # TP 1, FP 1, FN 1
    assert macro_f1(y, pred, 2) == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1], 2) == pytest.approx((2 / 3 + 1) / 2)
    np.testing.assert_array_equal(
        confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3), [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    )
    with pytest.raises(UndefinedMetricError, match="class 1"):
        f1_score([0, 0], [0, 0])
    # Class 2 occurs nowhere: macro F1 averages the two classes that do.
    assert macro_f1([0, 1], [0, 1], 3) == 1.0
    with pytest.raises(UndefinedMetricError):
        balanced_accuracy([], [], 2)


@PROPS
@given(
    st.integers(2, 4).flatmap(
        lambda c: st.tuples(
            st.just(c),
            st.lists(st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)), min_size=1),
        )
    )
)
def test_balanced_accuracy_lies_in_unit_interval(data: tuple[int, list[tuple[int, int]]]) -> None:
    c, pairs = data
    y, pred = (np.array(v) for v in zip(*pairs, strict=True))
    value = balanced_accuracy(y, pred, c)
    assert 0.0 <= value <= 1.0
    assert (value == 1.0) == bool(np.all(y == pred))


@PROPS
@given(labelled_scores(), st.integers(0, 1))
def test_constant_predictor_has_balanced_accuracy_one_half(
    data: tuple[np.ndarray, np.ndarray], constant: int
) -> None:
    y, _ = data
    assert balanced_accuracy(y.astype(int), np.full(y.size, constant), 2) == 0.5


def test_threshold_chooser_separates_a_separable_set() -> None:
    y = [0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.6, 0.9]
    t = choose_threshold(y, scores)
    assert t.value == pytest.approx(0.45)
    assert (t.youden_j, t.sensitivity, t.specificity) == (1.0, 1.0, 1.0)
    probs = np.stack([1 - np.array(scores), scores], axis=1)
    np.testing.assert_array_equal(predict_labels(probs, t.value), y)
    # Not separable: 0.35 (positive) sits below 0.4 (negative). Best J = 0.5, at 0.8 or at 0.35
    # (equal J: the strictest wins).
    t2 = choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert t2.youden_j == 0.5
    assert 0.4 < t2.value < 0.8
    with pytest.raises(UndefinedMetricError):
        choose_threshold([1, 1], [0.2, 0.3])


@PROPS
@given(
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=20),
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=20),
)
def test_threshold_chooser_separates_any_separable_set(neg: list[float], pos: list[float]) -> None:
    lo = max(neg)
    pos_shifted = np.array(pos) - min(pos) + lo + 1.0  # every positive above every negative
    scores = np.concatenate([neg, pos_shifted])
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    t = choose_threshold(y, scores)
    assert t.youden_j == 1.0
    assert np.all(pos_shifted >= t.value) and np.all(np.array(neg) < t.value)


def test_expected_calibration_error() -> None:
    # Bin [0.2, 0.3): four slides at 0.25, one positive; bin [0.7, 0.8): four at 0.75, three.
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    curve = calibration_curve(y, p, n_bins=10)
    assert curve.ece == 0.0
    assert curve.counts.tolist() == [0, 0, 4, 0, 0, 0, 0, 4, 0, 0]
    assert curve.fraction_positive[2] == 0.25 and curve.fraction_positive[7] == 0.75
    assert np.isnan(curve.mean_predicted[0])
    # Overconfident: everything at 0.9, half positive → ECE = |0.5 − 0.9| = 0.4.
    assert expected_calibration_error([1, 0, 1, 0], [0.9] * 4) == pytest.approx(0.4)
    # Two bins off by 0.25 and 0.05, weighted 2/4 each.
    mixed = expected_calibration_error([1, 0, 1, 1], [0.25, 0.25, 0.95, 0.95], n_bins=4)
    assert mixed == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)
    edges = calibration_curve([0, 1], [0.0, 1.0], n_bins=5)
    assert edges.counts.tolist() == [1, 0, 0, 0, 1]
    assert edges.ece == 0.0
    with pytest.raises(EvaluationError, match=r"\[0, 1\]"):
        calibration_curve([0, 1], [0.5, 1.2])
    # Multi-class: the top class's probability against being right.
    top = slide_calibration([0, 1, 2], [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], 10)
    assert top.counts[8] == 1 and top.fraction_positive[8] == 1.0  # 0.8, right
    assert top.counts[6] == 1 and top.fraction_positive[6] == 0.0  # 0.6 on class 0, wrong
    assert top.counts[7] == 1 and top.fraction_positive[7] == 1.0  # 0.7 (not in [0.6, 0.7))


def test_brier_score_hand_computed() -> None:
    assert brier_score([0, 1], [0.2, 0.7]) == pytest.approx((0.04 + 0.09) / 2)
    assert brier_score([0, 1], [[0.8, 0.2], [0.3, 0.7]]) == pytest.approx(0.065)
    assert brier_score([0], [[0.5, 0.3, 0.2]]) == pytest.approx(0.25 + 0.09 + 0.04)
    assert brier_score([1, 0], [1.0, 0.0]) == 0.0


# ---------------------------------------------------------------------------- localisation


def test_localisation_auroc_on_a_constructed_example() -> None:
    slides = {
        # lesion tiles (fraction ≥ 0.5, 0.5 included) score highest: 1.0
        "A": ([0.9, 0.8, 0.1, 0.2], [0.6, 0.5, 0.0, 0.49]),
        # the one lesion tile (0.3) beats only the 0.2 tile: 1/3
        "B": ([0.3, 0.7, 0.6, 0.2], [0.8, 0.1, 0.0, 0.0]),
        # no lesion tile: no AUROC of its own, but its tiles still count when pooled
        "C": ([0.5, 0.4], [0.0, 0.2]),
    }
    result = localisation_auroc(slides)
    assert result.per_slide_auroc == {"A": 1.0, "B": pytest.approx(1 / 3)}
    assert result.per_slide_mean_auroc == pytest.approx(2 / 3)
    assert set(result.skipped) == {"C"}
    assert "no lesion tile" in result.skipped["C"]
    # Pooled: lesion .9 and .8 beat all 7 others, .3 beats .1, .2, .2 → 17/21.
    assert result.pooled_auroc == pytest.approx(17 / 21)
    assert (result.n_tiles, result.n_lesion_tiles) == (10, 3)
    metrics = result.to_metrics()
    assert metrics.n_slides == 3 and metrics.skipped["C"] == result.skipped["C"]

    all_lesion = localisation_auroc({"A": ([0.1, 0.2], [1.0, 0.9]), "B": ([0.3], [0.0])})
    assert "no non-lesion tile" in all_lesion.skipped["A"]
    assert all_lesion.per_slide_mean_auroc is None
    assert all_lesion.pooled_auroc == 0.0
    with pytest.raises(UndefinedMetricError, match="localisation"):
        localisation_auroc({"A": ([0.1, 0.2], [0.0, 0.1])})
    with pytest.raises(EvaluationError, match="B: 2 tile scores but 1"):
        localisation_auroc({"B": ([0.1, 0.2], [0.0])})
    with pytest.raises(EvaluationError, match=r"\[0, 1\]"):
        localisation_auroc({"B": ([0.1, 0.2], [0.0, 1.5])})


def test_attention_is_scored_for_localisation_beside_the_tile_scores() -> None:
    from slidemill.workers.metrics import attention_localisation, top_k_lesion_share

    fractions = np.array([0.0, 1.0, 0.0, 0.6, 0.2])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3])  # tile scores rank the lesion first
    attention = np.array([0.3, 0.1, 0.25, 0.15, 0.2])  # attention looks elsewhere
    result = attention_localisation({"a": (scores, attention, fractions)})
    assert result.pooled_auroc == 1.0
    assert result.attention is not None and result.attention.pooled_auroc == 0.0
    assert result.attention_top_k == {"a": 0.0}
    metrics = result.to_metrics()
    assert metrics.attention_pooled_auroc == 0.0 and metrics.attention_top_k == {"a": 0.0}
    assert top_k_lesion_share(scores, fractions >= 0.5) == 1.0
    assert top_k_lesion_share([0.1, 0.9, 0.8, 0.2, 0.3], fractions >= 0.5) == 0.5
    assert top_k_lesion_share([0.1, 0.9, 0.8, 0.2, 0.3], fractions >= 0.5, k=1) == 1.0
