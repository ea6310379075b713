"""The training features' reference: how far a slide's tiles lie from the training slides'.

Format `slidemill-feature-reference/1` (`reference.safetensors` in a bundle, described by the
manifest's `reference`): the mean (D,) of the training tiles' features and the inverse of their
covariance shrunk toward its mean variance (D, D). A slide's OOD score is the median over its
tiles of the Mahalanobis distance divided by √D, about 1 for tiles like the training tiles; the
median lets a few odd tiles (an edge, a fold) pass while a slide mostly unlike the training
slides does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load_file, save_file

from slidemill.workers.errors import ModelBundleError, TrainingError

REFERENCE_SHRINKAGE = 0.1
"""Covariance shrinkage toward its mean variance: keeps the inverse stable with few slides."""
_MAX_TILES_PER_SLIDE = 2000
"""Tiles per slide the fit uses at most (an even subsample), so one large slide cannot dominate
and memory stays at a few MB per slide."""


@dataclass(frozen=True, slots=True, eq=False)
class ReferenceStats:
    """Mean and precision of training tile features (`eq=False`: arrays)."""

    mean: NDArray[np.float64]
    """Mean feature. Shape: D."""
    precision: NDArray[np.float64]
    """Inverse of the shrunk covariance. Shape: D x D."""
    n_slides: int
    """Slides fitted on."""
    n_tiles: int
    """Tiles fitted on."""


def fit_reference(slides: Sequence[NDArray[np.floating]]) -> ReferenceStats:
    """Fit on the tile features (n_i, D) of each training slide."""
    parts = [_subsample(np.asarray(f, dtype=np.float64)) for f in slides if len(f)]
    if not parts:
        raise TrainingError("a feature reference needs at least one slide with tiles")
    x = np.concatenate(parts)
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / max(1, x.shape[0] - 1)
    return ReferenceStats(mean, _shrunk_inverse(cov), len(parts), int(x.shape[0]))


def _shrunk_inverse(cov: NDArray[np.float64]) -> NDArray[np.float64]:
    d = cov.shape[0]
    scale = float(np.trace(cov)) / d or 1.0
    shrunk = (1.0 - REFERENCE_SHRINKAGE) * cov + REFERENCE_SHRINKAGE * scale * np.eye(d)
    inverse: NDArray[np.float64] = np.linalg.inv(shrunk).astype(np.float64)
    return inverse


@dataclass(frozen=True, slots=True, eq=False)
class ReferenceMoments:
    """The sums a reference is fitted from (the same tiles `fit_reference` uses): what a site
    sends so an aggregator can fit the reference of every site's slides (`eq=False`: arrays)."""

    n_slides: int
    """Slides summed."""
    n_tiles: int
    """Tiles summed."""
    total: NDArray[np.float64]
    """Σ x. Shape: D."""
    outer: NDArray[np.float64]
    """Σ x xᵀ. Shape: D x D."""

    def __add__(self, other: ReferenceMoments) -> ReferenceMoments:
        if self.total.shape != other.total.shape:
            raise TrainingError(f"moments of widths {self.total.shape} and {other.total.shape}")
        return ReferenceMoments(
            self.n_slides + other.n_slides,
            self.n_tiles + other.n_tiles,
            self.total + other.total,
            self.outer + other.outer,
        )

    def __sub__(self, other: ReferenceMoments) -> ReferenceMoments:
        return self + ReferenceMoments(-other.n_slides, -other.n_tiles, -other.total, -other.outer)


def reference_moments(slides: Sequence[NDArray[np.floating]]) -> ReferenceMoments:
    """The sums of `fit_reference`'s tiles (each slide's even subsample)."""
    parts = [_subsample(np.asarray(f, dtype=np.float64)) for f in slides if len(f)]
    if not parts:
        raise TrainingError("a feature reference needs at least one slide with tiles")
    x = np.concatenate(parts)
    return ReferenceMoments(len(parts), int(x.shape[0]), x.sum(axis=0), x.T @ x)


def reference_from_moments(moments: ReferenceMoments) -> ReferenceStats:
    """`fit_reference` from sums: the same reference, to rounding, as fitting on the tiles."""
    n = moments.n_tiles
    if n < 1 or moments.n_slides < 1:
        raise TrainingError("a feature reference needs at least one slide with tiles")
    mean = moments.total / n
    cov = (moments.outer - n * np.outer(mean, mean)) / max(1, n - 1)
    return ReferenceStats(mean, _shrunk_inverse(cov), moments.n_slides, n)


def _subsample(f: NDArray[np.float64]) -> NDArray[np.float64]:
    if f.shape[0] <= _MAX_TILES_PER_SLIDE:
        return f
    return f[np.linspace(0, f.shape[0] - 1, _MAX_TILES_PER_SLIDE).astype(np.int64)]


def ood_score(reference: ReferenceStats, features: NDArray[np.floating]) -> float:
    """A slide's OOD score: median over tiles (N, D) of Mahalanobis distance / √D."""
    x = np.asarray(features, dtype=np.float64) - reference.mean
    if x.shape[0] == 0:
        raise TrainingError("an OOD score needs at least one tile")
    d2 = np.einsum("nd,de,ne->n", x, reference.precision, x)
    return float(np.median(np.sqrt(np.maximum(d2, 0.0) / x.shape[1])))


def save_reference(path: Path, reference: ReferenceStats) -> None:
    """Write `reference.safetensors` (keys mean, precision as float64)."""
    # no metadata: safetensors writes its keys in no fixed order, and the file's sha256 is part
    # of the bundle id (the counts are in the manifest)
    save_file(
        {"mean": reference.mean.astype(np.float64), "precision": reference.precision}, str(path)
    )


def load_reference(path: Path, feature_dim: int) -> ReferenceStats:
    """Read a bundle's reference, checked against its feature width."""
    try:
        arrays = load_file(str(path))
        mean, precision = arrays["mean"], arrays["precision"]
    except (OSError, KeyError, ValueError) as err:
        raise ModelBundleError(f"{path}: unreadable feature reference: {err}") from err
    if mean.shape != (feature_dim,) or precision.shape != (feature_dim, feature_dim):
        raise ModelBundleError(
            f"{path}: reference of shape {mean.shape}, {precision.shape} for "
            f"{feature_dim}-d features"
        )
    return ReferenceStats(mean, precision, 0, 0)
