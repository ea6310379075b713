"""Slide- and lesion-level metrics: pure functions over arrays, no I/O, used by training (held-out
AUROC, the decision threshold) and by the evaluation report.

Conventions of every metric here:

- `y_true` holds integer class indices (or booleans for a binary target); `scores` and
  probabilities are finite floats. Shapes are checked; a wrong input raises `EvaluationError`.
- A metric that is undefined on the data given (AUROC with one class present, F1 of a class that
  never occurs, ...) raises `UndefinedMetricError`, never returns NaN.
- AUROC is the Mann–Whitney statistic: the probability that a random positive scores above a
  random negative, ties counted one half. It equals the trapezoidal area under `roc_curve`.

AUROC, the ROC curve and the Brier score are scikit-learn's, ranks scipy's; the functions here
check their inputs and keep the rule above (scikit-learn returns NaN or warns where these raise).
"""

from slidemill.workers.errors import EvaluationError, UndefinedMetricError
from slidemill.workers.metrics._calibration import (
    CalibrationCurve,
    TemperatureFit,
    apply_temperature,
    brier_score,
    calibration_curve,
    expected_calibration_error,
    fit_temperature,
    slide_calibration,
)
from slidemill.workers.metrics._checks import (
    check_binary_labels,
    check_class_labels,
    check_probabilities,
    check_scores,
    clamp_unit,
    frozen_array,
)
from slidemill.workers.metrics._classification import (
    Threshold,
    balanced_accuracy,
    choose_threshold,
    confusion_matrix,
    f1_score,
    macro_f1,
    predict_labels,
)
from slidemill.workers.metrics._localisation import (
    LocalisationResult,
    attention_localisation,
    localisation_auroc,
    top_k_lesion_share,
)
from slidemill.workers.metrics._ranking import (
    BootstrapInterval,
    OneVsRestAuroc,
    RocCurve,
    auroc,
    average_ranks,
    bootstrap_auroc_ci,
    one_vs_rest_auroc,
    roc_curve,
    slide_auroc,
)

__all__ = [
    "BootstrapInterval",
    "CalibrationCurve",
    "EvaluationError",
    "LocalisationResult",
    "OneVsRestAuroc",
    "RocCurve",
    "TemperatureFit",
    "Threshold",
    "UndefinedMetricError",
    "apply_temperature",
    "attention_localisation",
    "auroc",
    "average_ranks",
    "balanced_accuracy",
    "bootstrap_auroc_ci",
    "brier_score",
    "calibration_curve",
    "check_binary_labels",
    "check_class_labels",
    "check_probabilities",
    "check_scores",
    "choose_threshold",
    "clamp_unit",
    "confusion_matrix",
    "expected_calibration_error",
    "f1_score",
    "fit_temperature",
    "frozen_array",
    "localisation_auroc",
    "macro_f1",
    "one_vs_rest_auroc",
    "predict_labels",
    "roc_curve",
    "slide_auroc",
    "slide_calibration",
    "top_k_lesion_share",
]
