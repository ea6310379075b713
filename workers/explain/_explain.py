"""One slide explained: its regions' Shapley values, the faithfulness of each explanation the
model offers (attention, tile scores, Shapley values), and feature-level reasons for the top
regions. What the Dask task and the benchmark both call; no I/O."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from slidemill.workers.explain._curves import (
    Curve,
    deletion_curve,
    insertion_curve,
    region_order,
)
from slidemill.workers.explain._masked import MaskedBag
from slidemill.workers.explain._players import Players, choose_players
from slidemill.workers.explain._reasons import FeatureGroups, tile_reasons
from slidemill.workers.explain._shapley import region_shapley, tile_shares

DEFAULT_BUDGET = 64
"""Orders of the regions sampled per slide by default."""
DEFAULT_MAX_PLAYERS = 64
"""Regions a slide is cut into at most, by default."""
EXPLANATIONS = ("attention", "tile_score", "shapley")
"""The explanations compared, by the names their values are stored under."""
MAX_REASON_TILES = 64
"""Tiles given feature-level reasons at most per slide."""


@dataclass(frozen=True, slots=True)
class ExplainSettings:
    """How a slide is explained."""

    budget: int = DEFAULT_BUDGET
    """Random orders of the regions averaged (exact values when P! ≤ budget)."""
    seed: int = 0
    """Seed of the orders."""
    max_players: int = DEFAULT_MAX_PLAYERS
    """Regions at most (`choose_players`)."""
    top_regions: int = 5
    """Regions of highest positive value whose tiles get feature-level reasons."""
    reason_steps: int = 16
    """Integration steps of the reasons' Integrated Gradients."""

    def __post_init__(self) -> None:
        if self.budget < 1 or self.max_players < 1 or self.top_regions < 0:
            raise ValueError("budget and max_players must be ≥ 1, top_regions ≥ 0")


@dataclass(frozen=True, slots=True)
class Faithfulness:
    """How well one explanation's ranking of the regions follows the model."""

    deletion: Curve
    """The probability as regions are removed, most important first (falls fast: good)."""
    insertion: Curve
    """The probability as regions are added, most important first (rises fast: good)."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """One slide explained (N tiles, P regions, M tiles with reasons, G feature groups)."""

    target: int
    """The class explained."""
    players: Players
    """The regions."""
    region_values: NDArray[np.float64]
    """(P,) each region's Shapley value, log-odds of the target class."""
    shapley: NDArray[np.float32]
    """(N,) each tile's equal share of its region's value; NaN outside the bag."""
    full_log_odds: float
    """The whole bag's log-odds of the target: the values add up to this minus `empty_log_odds`."""
    empty_log_odds: float
    """The empty bag's."""
    exact: bool
    """Whether every order of the regions was taken."""
    permutations: int
    """Orders averaged."""
    evaluations: int
    """Sub-bags the head was asked about for the Shapley values."""
    faithfulness: Mapping[str, Faithfulness]
    """Curves of each of `EXPLANATIONS`."""
    reason_tiles: NDArray[np.int64]
    """(M,) the tiles with feature-level reasons (of the top regions)."""
    reasons: NDArray[np.float32]
    """(M, G) each one's Integrated Gradients by feature group."""
    reason_names: tuple[str, ...]
    """(G,) the groups' names; empty without named features."""
    seconds: float
    """Time spent."""


def choose_target(
    class_names: Sequence[str], probabilities: Sequence[float], target: str | None = None
) -> int:
    """The class to explain: `target` by name; by default the positive class of two (the
    second), else the most probable one. ValueError for a name not among `class_names`."""
    if target is not None:
        if target not in class_names:
            raise ValueError(f"no class {target!r}: the model's are {', '.join(class_names)}")
        return list(class_names).index(target)
    if len(class_names) == 2:
        return 1
    return int(np.argmax(np.asarray(probabilities)))


def explain_bag(
    head: nn.Module,
    features: NDArray[np.float32],
    grid_index: NDArray[np.integer],
    attention: NDArray[np.float32],
    tile_scores: NDArray[np.float32],
    target: int,
    settings: ExplainSettings | None = None,
    *,
    keep: NDArray[np.bool_] | None = None,
    groups: FeatureGroups | None = None,
    device: torch.device | None = None,
) -> Explanation:
    """Explain one slide's prediction of class `target`.

    features (N, D), grid_index (N, 2), attention (N,) and tile_scores (N, C) are the slide's
    own (as the run stored them); `keep` (N,) the tiles that were in the bag (all by default:
    a run with --qc exclude leaves some out). `groups`: the encoder's named feature groups, for
    reasons; None gives none."""
    t0 = time.perf_counter()
    settings = settings or ExplainSettings()
    device = device or torch.device("cpu")
    n_classes = int(tile_scores.shape[1])
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    players = choose_players(grid_index, settings.max_players, keep)
    bag = MaskedBag(head, x, target, n_classes)
    shap = region_shapley(bag, players, settings.budget, settings.seed)
    shares = tile_shares(players, shap.values)

    def probability(mask: NDArray[np.bool_]) -> NDArray[np.float64]:
        logit = bag(torch.from_numpy(np.ascontiguousarray(mask))).numpy()
        return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)

    values = {
        "attention": np.asarray(attention, np.float64),
        "tile_score": np.asarray(tile_scores[:, target], np.float64),
        "shapley": shares.astype(np.float64),
    }
    faithfulness = {}
    for name in EXPLANATIONS:
        order = region_order(players, values[name])
        faithfulness[name] = Faithfulness(
            deletion_curve(probability, players, order),
            insertion_curve(probability, players, order),
        )
    reason_tiles = np.zeros(0, dtype=np.int64)
    reasons = np.zeros((0, 0), dtype=np.float32)
    if groups is not None and settings.top_regions > 0:
        reason_tiles = _reason_tiles(players, shap.values, values["tile_score"], settings)
        reasons = tile_reasons(head, x, reason_tiles, target, groups, settings.reason_steps)
    return Explanation(
        target=target,
        players=players,
        region_values=shap.values,
        shapley=shares,
        full_log_odds=bag.full(torch.from_numpy(players.in_bag)),
        empty_log_odds=bag.empty,
        exact=shap.exact,
        permutations=shap.permutations,
        evaluations=shap.evaluations,
        faithfulness=faithfulness,
        reason_tiles=reason_tiles,
        reasons=reasons,
        reason_names=groups.names if groups is not None else (),
        seconds=time.perf_counter() - t0,
    )


def _reason_tiles(
    players: Players,
    region_values: NDArray[np.float64],
    tile_score: NDArray[np.float64],
    settings: ExplainSettings,
) -> NDArray[np.int64]:
    """The tiles of the `top_regions` regions of highest positive value, at most
    `MAX_REASON_TILES` (the highest-scoring tiles first when there are more)."""
    ranked = [int(r) for r in np.argsort(-region_values, kind="stable") if region_values[r] > 0]
    chosen = np.isin(players.of_tile, ranked[: settings.top_regions]) & players.in_bag
    tiles = np.flatnonzero(chosen)
    if tiles.size > MAX_REASON_TILES:
        tiles = tiles[np.argsort(-tile_score[tiles], kind="stable")[:MAX_REASON_TILES]]
    return np.sort(tiles).astype(np.int64)
