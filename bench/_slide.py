"""The benchmark's large slide: ≥ 1 gigapixel, JPEG-tiled, pyramidal, quick to generate.

Rendering a gigapixel of texture pixel by pixel would take far longer than the benchmark, so level
0 reuses a pool of pre-rendered tissue tiles (cut per pixel by the tissue outline, so the outline
is exact); the smaller levels are rendered from the same geometry, so tissue detection on a low
level sees the tissue where level 0 has it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

from slidemill.pipeline.synth import BACKGROUND, Ellipse, SyntheticSlide
from slidemill.schemas.files import staged

TILE = 256
POOL = 64


def large_slide_geometry(width: int, height: int) -> SyntheticSlide:
    """Three tissue sections across the slide, ~35% of its area, at 0.5 µm/px."""
    sections = tuple(
        Ellipse(cx=width * f, cy=height * 0.5, rx=width * 0.14, ry=height * 0.4)
        for f in (0.2, 0.5, 0.8)
    )
    return SyntheticSlide(width, height, 0.5, sections, seed=11)


def _level0_tiles(slide: SyntheticSlide) -> Iterator[NDArray[np.uint8]]:
    rng = np.random.default_rng(0)
    # a pool of tissue texture tiles (each from a slide that is tissue everywhere)
    texture = [
        SyntheticSlide(TILE, TILE, 0.5, (Ellipse(0, 0, 1e9, 1e9),), seed=i).render(
            0.0, 0.0, TILE, TILE, 1.0
        )
        for i in range(POOL)
    ]
    glass = np.empty((TILE, TILE, 3), np.uint8)
    glass[:] = BACKGROUND
    offsets = np.arange(TILE) + 0.5
    for ty in range(math.ceil(slide.height / TILE)):
        for tx in range(math.ceil(slide.width / TILE)):
            x, y = np.meshgrid(tx * TILE + offsets, ty * TILE + offsets)
            inside = slide.tissue_at(x, y)
            if not inside.any():
                yield glass
            else:
                pick = texture[int(rng.integers(POOL))]
                yield pick if inside.all() else np.where(inside[..., None], pick, glass)


def _level_tiles(slide: SyntheticSlide, ds: int, w: int, h: int) -> Iterator[NDArray[np.uint8]]:
    for ty in range(0, h, TILE):
        for tx in range(0, w, TILE):
            yield slide.render(tx * ds, ty * ds, TILE, TILE, ds, samples=1)  # speed over fidelity


def write_large_slide(path: Path, width: int = 50_000, height: int = 20_000) -> Path:
    """Write (once; reused when present) a generic tiled TIFF pyramid with mpp 0.5."""
    if path.is_file():
        return path
    slide = large_slide_geometry(width, height)
    with staged(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, ds in enumerate((1, 4, 16, 64)):
            w, h = math.ceil(width / ds), math.ceil(height / ds)
            tiles = _level0_tiles(slide) if ds == 1 else _level_tiles(slide, ds, w, h)
            res = 1e4 / (0.5 * ds)
            tif.write(
                tiles,
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": 85},
                photometric="rgb",
                subfiletype=1 if i else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path
