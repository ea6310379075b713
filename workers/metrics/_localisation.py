"""Lesion localisation: how well tile scores find the annotated lesion on positive slides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import ArrayLike

from slidemill.schemas import LocalisationMetrics
from slidemill.workers.errors import EvaluationError, UndefinedMetricError
from slidemill.workers.metrics._checks import BoolArray, FloatArray, check_scores
from slidemill.workers.metrics._ranking import _auroc_unchecked, auroc


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
    attention: LocalisationResult | None = None
    """The same figures for the attention weights, when they were scored too."""
    attention_top_k: Mapping[str, float] = field(default_factory=dict)
    """Slide id → `top_k_lesion_share` of its attention (slides with a lesion tile)."""

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
            attention_pooled_auroc=None if self.attention is None else self.attention.pooled_auroc,
            attention_per_slide_mean_auroc=None
            if self.attention is None
            else self.attention.per_slide_mean_auroc,
            attention_top_k=dict(self.attention_top_k),
        )


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
        s = check_scores(scores, f"{slide_id}: tile scores")
        f = check_scores(fractions, f"{slide_id}: lesion fractions")
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


def top_k_lesion_share(scores: ArrayLike, lesion: ArrayLike, k: int | None = None) -> float:
    """Share of a slide's `k` highest-scoring tiles that are lesion tiles.

    scores (n_tiles,), lesion (n_tiles,) bool → a value in [0, 1]. `k` defaults to the number of
    lesion tiles (then it is also the share of the lesion tiles found in the top k: 1 when the
    heatmap ranks every lesion tile first); ties are broken towards the earlier tile. Raises
    `UndefinedMetricError` when the slide has no lesion tile and no `k` is given.
    """
    s = check_scores(scores, "tile scores")
    mask = np.asarray(lesion, dtype=bool)
    if mask.shape != s.shape:
        raise EvaluationError(f"{s.shape[0]} tile scores but {mask.shape[0]} lesion flags")
    n = int(mask.sum()) if k is None else k
    if n < 1:
        raise UndefinedMetricError("top-k lesion share: no lesion tile and no k")
    n = min(n, s.shape[0])
    top = np.argsort(-s, kind="stable")[:n]
    return float(mask[top].mean())


def attention_localisation(
    slides: Mapping[str, tuple[ArrayLike, ArrayLike, ArrayLike]],
    *,
    lesion_fraction_threshold: float = 0.5,
) -> LocalisationResult:
    """`localisation_auroc` of the tile scores, with the attention weights scored beside them.

    slides: slide id → (tile scores (n,), attention (n,), lesion fraction of each tile (n,)).
    The result is that of the tile scores; its `attention` holds the attention's, and
    `attention_top_k` the per-slide share of lesion tiles among the most attended."""
    tiles = {sid: (s, f) for sid, (s, _, f) in slides.items()}
    attention = {sid: (a, f) for sid, (_, a, f) in slides.items()}
    result = localisation_auroc(tiles, lesion_fraction_threshold=lesion_fraction_threshold)
    by_attention = localisation_auroc(
        attention, lesion_fraction_threshold=lesion_fraction_threshold
    )
    top_k = {}
    for sid, (_, a, f) in slides.items():
        lesion = np.asarray(f, dtype=np.float64) >= lesion_fraction_threshold
        if lesion.any():
            top_k[sid] = top_k_lesion_share(a, lesion)
    return replace(result, attention=by_attention, attention_top_k=top_k)
