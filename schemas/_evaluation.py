"""The evaluation report (`slidemill evaluate`): slide-level figures per fold and pooled, and the
lesion localisation figure, written as `evaluation.json`.

The numbers are computed by `slidemill.workers.metrics` and `slidemill.pipeline.evaluation`;
these models are the contract other lab systems read. Every float is finite (NaN and infinity
are refused): a figure that is undefined is either absent (`None`, with the reason documented on
the field) or the evaluation fails with a typed error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from slidemill.schemas._base import Frozen

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
"""A float in [0, 1] (NaN refused)."""

SHA256 = r"^[0-9a-f]{64}$"


class ConfidenceInterval(Frozen):
    """A bootstrap confidence interval for the slide-level AUROC."""

    low: Unit = Field(description="Lower bound.")
    high: Unit = Field(description="Upper bound.")
    level: float = Field(gt=0.0, lt=1.0, description="Coverage, e.g. 0.95.")
    n_resamples: int = Field(ge=1, description="Bootstrap resamples drawn.")
    seed: int = Field(description="Seed of the resampling RNG (numpy default_rng).")
    method: Literal["stratified_percentile_bootstrap"] = Field(
        default="stratified_percentile_bootstrap",
        description="Slides resampled with replacement within each true class (so every "
        "resample holds every class); the interval is the percentiles of the resampled AUROCs.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ConfidenceInterval:
        if self.low > self.high:
            raise ValueError(f"interval low ({self.low}) is above high ({self.high})")
        return self


class ReliabilityBin(Frozen):
    """One bin of the reliability diagram: predicted probability against observed frequency."""

    lower: Unit = Field(description="Lower edge of the bin (inclusive).")
    upper: Unit = Field(description="Upper edge (exclusive, except 1.0 in the last bin).")
    count: int = Field(ge=0, description="Slides whose predicted probability falls in the bin.")
    mean_predicted: Unit | None = Field(
        default=None, description="Mean predicted probability in the bin; None when empty."
    )
    fraction_positive: Unit | None = Field(
        default=None, description="Fraction of the bin's slides that are positive; None when empty."
    )


class ClassificationMetrics(Frozen):
    """Slide-level figures over one set of slides (one test fold, or all folds pooled)."""

    n_slides: int = Field(ge=1, description="Slides evaluated.")
    n_slides_per_class: tuple[int, ...] = Field(
        description="Slides per true class, in the order of the report's `class_names`."
    )
    auroc: Unit = Field(
        description="Area under the ROC curve (Mann–Whitney, ties counted one half). Two "
        "classes: P(second class) against the second class. More: the macro mean of the "
        "one-vs-rest AUROCs."
    )
    auroc_per_class: tuple[Unit, ...] = Field(
        description="One-vs-rest AUROC of each class's probability, in `class_names` order."
    )
    auroc_ci: ConfidenceInterval | None = Field(
        default=None, description="Bootstrap confidence interval of `auroc`; None when not drawn."
    )
    balanced_accuracy: Unit = Field(
        description="Mean recall over the classes present among the true labels."
    )
    f1: Unit | None = Field(
        default=None,
        description="F1 of the positive (second) class; two classes only, else None.",
    )
    macro_f1: Unit = Field(
        description="Mean F1 over the classes that occur among the true or predicted labels."
    )
    confusion_matrix: tuple[tuple[int, ...], ...] = Field(
        description="Counts, rows = true class, columns = predicted class (`class_names` order)."
    )
    threshold: float | None = Field(
        default=None,
        description="Two classes: a slide is predicted positive when P(positive) >= threshold "
        "(chosen on validation data, saved in the model bundle). None: the most probable class "
        "(multi-class, no saved threshold, or pooled folds whose thresholds differ).",
    )
    ece: Unit = Field(
        description="Expected calibration error over `reliability`: Σ_bins (count / n) · "
        "|fraction positive − mean predicted|."
    )
    brier: float = Field(
        ge=0.0,
        le=2.0,
        description="Brier score. Two classes: mean (P(positive) − y)², in [0, 1]. More: mean "
        "over slides of Σ_classes (p_c − [y = c])², in [0, 2].",
    )
    calibration_target: Literal["positive_class", "top_label"] = Field(
        description="What the reliability bins measure: P(positive) against being positive (two "
        "classes), or the top class's probability against being correct (multi-class)."
    )
    reliability: tuple[ReliabilityBin, ...] = Field(
        min_length=1, description="Equal-width bins over [0, 1]."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ClassificationMetrics:
        n_classes = len(self.n_slides_per_class)
        if n_classes < 2:
            raise ValueError("n_slides_per_class needs one entry per class (at least two)")
        if sum(self.n_slides_per_class) != self.n_slides:
            raise ValueError(
                f"n_slides_per_class sums to {sum(self.n_slides_per_class)}, not n_slides "
                f"({self.n_slides})"
            )
        if len(self.auroc_per_class) != n_classes:
            raise ValueError(f"auroc_per_class needs {n_classes} entries")
        if len(self.confusion_matrix) != n_classes or any(
            len(row) != n_classes for row in self.confusion_matrix
        ):
            raise ValueError(f"confusion_matrix must be {n_classes} × {n_classes}")
        if tuple(sum(row) for row in self.confusion_matrix) != self.n_slides_per_class:
            raise ValueError("confusion_matrix row sums differ from n_slides_per_class")
        if sum(b.count for b in self.reliability) != self.n_slides:
            raise ValueError("reliability bin counts do not sum to n_slides")
        return self


class FoldMetrics(ClassificationMetrics):
    """The figures of one cross-validation test fold (or of the single test set)."""

    fold: str = Field(min_length=1, description="Fold name, e.g. 'fold-0' or 'test'.")
    model_sha256: str | None = Field(
        default=None,
        pattern=SHA256,
        description="Id of the model bundle that scored this fold, when it differs per fold.",
    )


class LocalisationMetrics(Frozen):
    """How well per-tile scores find the annotated lesion, over positive slides.

    A tile counts as lesion when its annotated lesion fraction is at least
    `lesion_fraction_threshold`; the figure is the AUROC of tile scores against that.
    """

    lesion_fraction_threshold: Unit = Field(
        default=0.5, description="A tile is lesion when its lesion fraction is at least this."
    )
    n_slides: int = Field(ge=1, description="Slides given (positive slides with annotations).")
    n_tiles: int = Field(ge=1, description="Tiles over all those slides.")
    n_lesion_tiles: int = Field(ge=0, description="Of which lesion tiles.")
    pooled_auroc: Unit = Field(description="AUROC over all tiles of all slides together.")
    per_slide_mean_auroc: Unit | None = Field(
        default=None,
        description="Mean of the per-slide AUROCs; None when every slide was skipped.",
    )
    per_slide_auroc: dict[str, Unit] = Field(
        default_factory=dict, description="Slide id → AUROC of its tiles."
    )
    skipped: dict[str, str] = Field(
        default_factory=dict,
        description="Slide id → why it has no per-slide AUROC (its tiles are all one class).",
    )
    attention_pooled_auroc: Unit | None = Field(
        default=None,
        description="The same pooled AUROC for the attention weights instead of the tile scores "
        "(None where no attention was stored).",
    )
    attention_per_slide_mean_auroc: Unit | None = Field(
        default=None, description="Mean of the per-slide AUROCs of the attention weights."
    )
    attention_top_k: dict[str, Unit] = Field(
        default_factory=dict,
        description="Slide id → share of its k most attended tiles that are lesion tiles, k its "
        "number of lesion tiles (1: attention ranks every lesion tile first).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LocalisationMetrics:
        if self.n_lesion_tiles > self.n_tiles:
            raise ValueError("n_lesion_tiles exceeds n_tiles")
        both = set(self.per_slide_auroc) & set(self.skipped)
        if both:
            raise ValueError(f"slides both scored and skipped: {sorted(both)}")
        if len(self.per_slide_auroc) + len(self.skipped) != self.n_slides:
            raise ValueError("per_slide_auroc and skipped must together cover n_slides slides")
        if (self.per_slide_mean_auroc is None) != (not self.per_slide_auroc):
            raise ValueError("per_slide_mean_auroc is None exactly when no slide was scored")
        return self


class TemperatureScaling(Frozen):
    """The bundle's temperature scaling, judged on the slides evaluated: the same figures of the
    head's own probabilities (before) and of the calibrated ones the runs report (after)."""

    temperature: float = Field(gt=0, description="Logits divided by this.")
    ece_before: Unit
    ece_after: Unit
    brier_before: float = Field(ge=0)
    brier_after: float = Field(ge=0)
    auroc_before: Unit = Field(description="Unchanged by a temperature (same ranking).")
    auroc_after: Unit


class EvaluationReport(Frozen):
    """`evaluation.json`: a model's slide-level and localisation figures on held-out slides."""

    format_version: Literal[1] = 1
    model_sha256: str = Field(
        pattern=SHA256, description="Id of the model bundle evaluated (sha256 of its manifest)."
    )
    slidemill_version: str = Field(description="slidemill version that computed the figures.")
    class_names: tuple[str, ...] = Field(min_length=2, description="Slide-level classes, in order.")
    positive_class: str | None = Field(
        default=None, description="Two classes: the second, the one `f1` and `threshold` are for."
    )
    folds: tuple[FoldMetrics, ...] = Field(min_length=1, description="One entry per test fold.")
    pooled: ClassificationMetrics = Field(
        description="All folds' out-of-fold predictions together (each slide predicted with "
        "its own fold's threshold)."
    )
    localisation: LocalisationMetrics | None = Field(
        default=None, description="Lesion localisation; None when no lesion annotations were given."
    )
    temperature_scaling: TemperatureScaling | None = Field(
        default=None,
        description="Calibration before and after the bundle's temperature; None when it has "
        "none. The figures above are after it (what `slidemill run` reports).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationReport:
        n_classes = len(self.class_names)
        if len(set(self.class_names)) != n_classes:
            raise ValueError("class_names must be distinct")
        expected_positive = self.class_names[1] if n_classes == 2 else None
        if self.positive_class != expected_positive:
            raise ValueError(f"positive_class must be {expected_positive!r}")
        for metrics in (*self.folds, self.pooled):
            if len(metrics.n_slides_per_class) != n_classes:
                raise ValueError(f"figures must have one entry per class ({n_classes})")
            if (metrics.f1 is None) != (n_classes != 2):
                raise ValueError("f1 is given exactly when there are two classes")
        names = [f.fold for f in self.folds]
        if len(set(names)) != len(names):
            raise ValueError("fold names must be distinct")
        if sum(f.n_slides for f in self.folds) != self.pooled.n_slides:
            raise ValueError("pooled n_slides must be the sum over folds")
        return self
