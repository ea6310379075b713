"""Feature-level reasons: which named features moved a tile's score, by Captum's Integrated
Gradients on the head.

The `handcrafted` and `texture` encoders' columns have names (`HANDCRAFTED_FEATURES`,
`TEXTURE_FEATURES`); a learned encoder's do not, and in an "A+B" concatenation its columns are
summed into one group named after the part. For each chosen tile, the attribution of column j
is Integrated Gradients of the tile's log-odds of the target class (its row of `tile_logits`,
with the tile's features moving and the rest of the bag as it is) from the bag's median tile to
the tile itself: how much of the tile's difference from the slide's typical tile each feature
accounts for. The attributions of a tile add up to that difference (IG's completeness, up to
the integral's error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from slidemill.workers.explain._masked import log_odds
from slidemill.workers.models import (
    HANDCRAFTED_FEATURES,
    TEXTURE_FEATURES,
    ConcatEncoder,
    HandcraftedEncoder,
    TextureEncoder,
)

_NAMED: dict[type[nn.Module], tuple[str, ...]] = {
    HandcraftedEncoder: HANDCRAFTED_FEATURES,
    TextureEncoder: TEXTURE_FEATURES,
}
"""The weight-free encoders whose columns have names."""


@dataclass(frozen=True, slots=True)
class FeatureGroups:
    """An encoder's columns grouped under names (D columns, G groups)."""

    names: tuple[str, ...]
    """(G,) each group's name: a named feature, or a learned part's name."""
    of_column: NDArray[np.int64]
    """(D,) the group each column adds to."""

    def sum(self, columns: NDArray[np.floating]) -> NDArray[np.float32]:
        """(M, D) per-column values → (M, G) summed by group."""
        out = np.zeros((columns.shape[0], len(self.names)), dtype=np.float64)
        np.add.at(out.T, self.of_column, np.asarray(columns, np.float64).T)
        return out.astype(np.float32)


def feature_groups(encoder: nn.Module, name: str) -> FeatureGroups | None:
    """The named groups of `encoder`'s columns (`name`: its registry name, "A+B" for a
    concatenation); None when no column has a name (nothing to say in words)."""
    parts: list[tuple[str, nn.Module]]
    if isinstance(encoder, ConcatEncoder):
        given = name.split("+")
        labels = (
            given
            if len(given) == len(encoder.parts)
            else [f"part {i}" for i in range(len(encoder.parts))]
        )
        parts = list(zip(labels, encoder.parts, strict=True))
    else:
        parts = [(name, encoder)]
    names: list[str] = []
    of_column: list[int] = []
    for part_name, part in parts:
        named = _NAMED.get(type(part))
        if named is not None:
            for feature in named:
                of_column.append(len(names))
                names.append(feature)
        else:
            width = int(getattr(part, "feature_dim", 0))
            group = len(names)
            names.append(f"{part_name.strip()} (learned)")
            of_column += [group] * width
    if not any(type(p) in _NAMED for _, p in parts):
        return None
    return FeatureGroups(tuple(names), np.asarray(of_column, dtype=np.int64))


def tile_reasons(
    head: nn.Module,
    features: torch.Tensor,
    tiles: NDArray[np.int64],
    target: int,
    groups: FeatureGroups,
    steps: int = 16,
) -> NDArray[np.float32]:
    """(M, G) Integrated Gradients of each of `tiles`' log-odds of class `target`, from the
    bag's median tile, summed by feature group; features (N, D) is the whole bag."""
    from captum.attr import IntegratedGradients

    if tiles.size == 0:
        return np.zeros((0, len(groups.names)), dtype=np.float32)
    rows = torch.as_tensor(tiles, dtype=torch.long, device=features.device)
    bag = features.detach()

    def score(x: torch.Tensor) -> torch.Tensor:
        # x (M, D): the chosen tiles' features at one point of the path, the rest of the bag
        # unchanged (a head may compare a tile with its bag, as TopKMIL does with its median)
        moved = bag.index_put((rows,), x)
        return log_odds(head(moved).tile_logits[rows], target)

    inputs = bag[rows].clone().requires_grad_(True)
    baseline = bag.median(dim=0).values.expand_as(inputs).contiguous()
    with torch.enable_grad():
        attr = IntegratedGradients(score).attribute(
            inputs, baselines=baseline, n_steps=steps, internal_batch_size=int(tiles.size)
        )
    return groups.sum(attr.detach().double().cpu().numpy())
