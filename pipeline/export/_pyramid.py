"""The heatmap as a multiscale image (pure): NaN-aware 2× levels and each level's NGFF
scale and translation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.export._geometry import CellGeometry

MIN_SIDE = 64
"""No coarser level is made once the longest side of a level is at most this many cells."""
MAX_LEVELS = 8
"""Levels at most, the full-resolution one included."""


def downsample(heat: NDArray[np.float32]) -> NDArray[np.float32]:
    """(C, h, w) → (C, ⌈h/2⌉, ⌈w/2⌉): each cell the mean of the non-NaN cells of its 2 × 2 block,
    NaN where all four are NaN (off tissue stays transparent; a tissue edge is not diluted)."""
    c, h, w = heat.shape
    padded = np.full((c, h + h % 2, w + w % 2), np.nan, dtype=np.float32)
    padded[:, :h, :w] = heat
    blocks = padded.reshape(c, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    valid = ~np.isnan(blocks)
    total = np.where(valid, blocks, 0).sum(axis=(2, 4), dtype=np.float64)
    count = valid.sum(axis=(2, 4))
    out = np.full(total.shape, np.nan, dtype=np.float32)
    np.divide(total, count, out=out, where=count > 0, casting="unsafe")
    return out


def pyramid(heat: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    """The heatmap, then 2× coarser levels until the longest side is at most `MIN_SIDE`."""
    levels = [np.asarray(heat, dtype=np.float32)]
    while max(levels[-1].shape[1:]) > MIN_SIDE and len(levels) < MAX_LEVELS:
        levels.append(downsample(levels[-1]))
    return levels


@dataclass(frozen=True, slots=True)
class LevelTransform:
    """One level's NGFF coordinate transformations on the axes c, y, x (µm for y and x)."""

    scale: tuple[float, float, float]
    """Size of one array element: 1 for c, µm for y and x."""
    translation: tuple[float, float, float]
    """Where element (0, 0, 0)'s centre lies: 0 for c, µm for y and x."""

    def ngff(self) -> list[dict[str, object]]:
        return [
            {"type": "scale", "scale": list(self.scale)},
            {"type": "translation", "translation": list(self.translation)},
        ]


def level_transforms(geometry: CellGeometry, n_levels: int) -> list[LevelTransform]:
    """Transforms of levels 0…n−1: level k's element j covers cells j·2ᵏ … (j+1)·2ᵏ − 1, so its
    centre is (2ᵏ − 1)/2 cells past that of cell j·2ᵏ (the padding of `downsample` only adds
    elements at the far edges, so every level starts at cell 0)."""
    s, t = geometry.cell_um, geometry.first_centre_um
    out = []
    for k in range(n_levels):
        f = 2.0**k
        tk = t + (f - 1) / 2 * s
        out.append(LevelTransform((1.0, s * f, s * f), (0.0, tk, tk)))
    return out
