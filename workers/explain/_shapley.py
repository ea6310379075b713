"""Shapley values of a slide's regions, by Captum.

The game: the players are regions of tiles (`Players`), a coalition is the bag of their tiles,
and its worth is the slide's log-odds of the target class (`MaskedBag`, absent tiles removed).
Captum's `ShapleyValueSampling` adds the players one at a time in random orders, `budget`
orders, and averages each one's marginal contribution; every order's contributions add up to
the whole bag's worth minus the empty bag's, so the estimate is efficient exactly, whatever the
budget. When there are so few players that every order fits in the budget (P! ≤ budget),
Captum's `ShapleyValues` enumerates them all: the exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from slidemill.workers.explain._masked import MaskedBag
from slidemill.workers.explain._players import Players

PER_EVAL = 64
"""Coalitions handed to the head in one call (Captum's `perturbations_per_eval`)."""


@dataclass(frozen=True, slots=True)
class RegionShapley:
    """The Shapley values of one slide's players."""

    values: NDArray[np.float64]
    """(P,) each player's value, in log-odds of the target class."""
    exact: bool
    """Whether every order of the players was taken (else `permutations` sampled ones)."""
    permutations: int
    """Orders of the players averaged."""
    evaluations: int
    """Sub-bags the head was asked about."""


def region_shapley(bag: MaskedBag, players: Players, budget: int, seed: int) -> RegionShapley:
    """The Shapley values of `players` in the game `bag` defines, from `budget` random orders
    drawn with `seed` (exact when P! ≤ budget). Tiles of no player stay out of every coalition.
    The global random state is left as it was."""
    from captum.attr import ShapleyValues, ShapleyValueSampling

    if budget < 1:
        raise ValueError(f"the budget must be at least one order of the players, got {budget}")
    if players.of_tile.shape[0] != bag.n_tiles:
        raise ValueError(f"{players.of_tile.shape[0]} tiles grouped, the bag has {bag.n_tiles}")
    p = players.n_players
    if p == 0:
        return RegionShapley(np.zeros(0), True, 0, 0)
    members = torch.from_numpy(np.flatnonzero(players.in_bag))
    n = bag.n_tiles

    def worth(presence: torch.Tensor) -> torch.Tensor:
        # presence (B, n_bag): 1 for tiles of the coalition, 0 (Captum's baseline) for the rest
        keep = torch.zeros((presence.shape[0], n), dtype=torch.bool)
        keep[:, members] = presence.cpu() > 0.5
        return bag(keep)

    inputs = torch.ones((1, members.numel()), dtype=torch.float64)
    mask = torch.from_numpy(players.of_tile[players.in_bag].astype(np.int64)).unsqueeze(0)
    exact = math.factorial(p) <= budget if p <= 12 else False
    before = bag.evaluations
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if exact:
            method = ShapleyValues(worth)
            attr = method.attribute(
                inputs, baselines=0.0, feature_mask=mask, perturbations_per_eval=PER_EVAL
            )
            orders = math.factorial(p)
        else:
            method = ShapleyValueSampling(worth)
            attr = method.attribute(
                inputs,
                baselines=0.0,
                feature_mask=mask,
                n_samples=budget,
                perturbations_per_eval=PER_EVAL,
            )
            orders = budget
    per_tile = attr.detach().double().cpu().numpy()[0]
    values = np.zeros(p, dtype=np.float64)
    values[players.of_tile[players.in_bag]] = per_tile  # every tile carries its player's value
    return RegionShapley(values, exact, orders, bag.evaluations - before)


def tile_shares(players: Players, values: NDArray[np.float64]) -> NDArray[np.float32]:
    """(N,) each tile's equal share of its player's value (NaN for tiles of no player): the
    shares of a slide add up to its players' values, and a region's mean share ranks it by value
    per tile."""
    out = np.full(players.of_tile.shape[0], np.nan, dtype=np.float32)
    inside = players.in_bag
    own = players.of_tile[inside]
    out[inside] = (values[own] / players.sizes[own]).astype(np.float32)
    return out
