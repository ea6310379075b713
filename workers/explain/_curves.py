"""Faithfulness of an explanation (pure): deletion and insertion curves over its ranking.

An explanation ranks the slide's regions; removing them from the bag in that order (deletion)
should make the slide's probability of the target class fall fast if the explanation found what
the model used, and adding them to an empty bag in that order (insertion) should make it rise
fast. Each curve follows the probability against the share of the bag's tiles removed (or
added), from 0 to 1, and its area (trapezoids) sums it up: lower is better for deletion, higher
for insertion (Petsiuk et al., RISE, 2018, on images; here regions of a slide, removed from the
bag). Every explanation is ranked by the same rule: a region's mean value over its tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from slidemill.workers.explain._players import Players

Probability = Callable[[NDArray[np.bool_]], NDArray[np.float64]]
"""keep (B, N) bool → (B,) the slide's probability of the target class for each sub-bag."""


@dataclass(frozen=True, slots=True)
class Curve:
    """One deletion or insertion curve (P regions, P + 1 points)."""

    fraction: NDArray[np.float64]
    """(P + 1,) share of the bag's tiles removed (deletion) or added (insertion), 0 … 1."""
    probability: NDArray[np.float64]
    """(P + 1,) the slide's probability of the target class at each point."""

    @property
    def auc(self) -> float:
        """Area under the curve over the share of tiles, 0 … 1."""
        if self.fraction.size < 2:
            return float(self.probability[0]) if self.probability.size else float("nan")
        f, p = self.fraction, self.probability
        return float(np.sum((f[1:] - f[:-1]) * (p[1:] + p[:-1]) / 2))


def region_order(
    players: Players, tile_values: NDArray[np.floating], rng: np.random.Generator | None = None
) -> NDArray[np.int64]:
    """The regions from highest to lowest mean of `tile_values` (N,) over their tiles (NaN
    values are left out of the mean; a region with none comes last); ties by region number.
    With `rng`: a random order instead, the reference any explanation should beat."""
    p = players.n_players
    if rng is not None:
        return rng.permutation(p).astype(np.int64)
    inside = players.in_bag & np.isfinite(tile_values)
    own = players.of_tile[inside]
    total = np.bincount(own, weights=np.asarray(tile_values, np.float64)[inside], minlength=p)
    count = np.bincount(own, minlength=p)
    mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    return np.lexsort((np.arange(p), -mean)).astype(np.int64)


def _steps(
    players: Players, order: NDArray[np.int64]
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """(P + 1, N) whether each tile is among the first k regions of `order`, k = 0 … P, and the
    share of the bag's tiles that is."""
    p = players.n_players
    rank = np.empty(p, dtype=np.int64)
    rank[order] = np.arange(p)
    tile_rank = np.where(players.in_bag, rank[np.maximum(players.of_tile, 0)], p)  # out: never
    k = np.arange(p + 1)[:, None]
    taken = tile_rank[None, :] < k
    sizes = players.sizes[order].astype(np.float64)
    total = max(float(sizes.sum()), 1.0)
    fraction = np.concatenate([[0.0], np.cumsum(sizes) / total])
    return taken, fraction


def deletion_curve(prob: Probability, players: Players, order: NDArray[np.int64]) -> Curve:
    """The probability as the regions are removed from the whole bag in `order`."""
    taken, fraction = _steps(players, order)
    return Curve(fraction, np.asarray(prob(players.in_bag[None, :] & ~taken), np.float64))


def insertion_curve(prob: Probability, players: Players, order: NDArray[np.int64]) -> Curve:
    """The probability as the regions are added to an empty bag in `order`."""
    taken, fraction = _steps(players, order)
    return Curve(fraction, np.asarray(prob(players.in_bag[None, :] & taken), np.float64))
