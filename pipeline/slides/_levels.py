"""Pure arithmetic between physical resolution (µm/px) and pyramid levels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A level counts as "at" the target when within this relative tolerance: slides report 0.2498
# for a nominal 0.25 and the models were trained at the nominal value.
MPP_TOLERANCE = 0.02


@dataclass(frozen=True, slots=True)
class LevelChoice:
    """Where to read from for a target resolution."""

    level: int
    """Pyramid level to read (0 = full resolution)."""
    level_downsample: float
    """Downsample of that level relative to level 0."""
    scale: float
    """Target pixels per level pixel (≤ 1 + tolerance: we only shrink, never invent detail)."""
    tile_level0: float
    """Edge of one target tile, in level-0 pixels."""


def choose_level(
    base_mpp: float, downsamples: Sequence[float], target_mpp: float, tile_px: int
) -> LevelChoice:
    """Pick the coarsest level that is still at least as fine as `target_mpp`.

    `downsamples` are the pyramid's level downsamples (level 0 first, 1.0). When the target is
    finer than level 0, level 0 is read and upsampled (scale > 1) rather than failing; the caller
    decides whether that is acceptable.
    """
    if base_mpp <= 0 or target_mpp <= 0:
        raise ValueError("mpp must be positive")
    best = 0
    for i, ds in enumerate(downsamples):
        if base_mpp * ds <= target_mpp * (1 + MPP_TOLERANCE) and ds >= downsamples[best]:
            best = i
    ds = float(downsamples[best])
    level_mpp = base_mpp * ds
    return LevelChoice(
        level=best,
        level_downsample=ds,
        scale=level_mpp / target_mpp,
        tile_level0=tile_px * target_mpp / base_mpp,
    )
