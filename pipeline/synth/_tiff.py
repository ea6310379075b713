"""Writing slides: tile by tile as JPEG-compressed tiled TIFF, Aperio-style SVS (with mpp, a
thumbnail and a synthetic label image) or a generic tiled TIFF. Coarser levels are box averages
of level 0."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray

from slidemill.pipeline.synth._noise import _box
from slidemill.pipeline.synth._slide import SyntheticSlide, _planes_to_uint8, _render_planes
from slidemill.schemas.errors import InvalidInputError

# Coarser levels of `write_slide` are box averages of the level-0 tiles, kept in memory up to
# this size; beyond it each level is rendered on its own (slower, memory stays at a few tiles).
_CACHE_LIMIT_BYTES = 512 * 2**20


def _tiles(
    slide: SyntheticSlide, ds: float, width: int, height: int, tile: int
) -> Iterator[NDArray[np.uint8]]:
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            yield slide.render(tx * ds, ty * ds, tile, tile, ds)


def _tiles_with_pyramid(
    slide: SyntheticSlide, width: int, height: int, tile: int, cache: dict[int, NDArray[np.uint8]]
) -> Iterator[NDArray[np.uint8]]:
    """Level-0 tiles; on the way, fills each coarser level in `cache` with the box average of the
    level-0 pixels (what `render` gives at downsample 4, up to float rounding)."""
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            planes = _render_planes(slide, tx, ty, tile, tile, 1.0)
            small, done = planes, 1
            for ds in sorted(cache):
                small, done = _box(small, ds // done), ds
                n = tile // ds
                part = cache[ds][ty // ds : ty // ds + n, tx // ds : tx // ds + n]
                part[...] = _planes_to_uint8(small[:, : part.shape[0], : part.shape[1]])
            yield _planes_to_uint8(planes)


def _pyramid_cache(
    slide: SyntheticSlide, downsamples: Sequence[int], tile: int
) -> dict[int, NDArray[np.uint8]] | None:
    """Empty coarser levels to fill from level 0, or None when they cannot be (downsamples that
    do not nest or divide the tile) or would not fit in memory."""
    if not downsamples or downsamples[0] != 1:
        return None
    prev = 1
    for ds in downsamples[1:]:
        if ds != int(ds) or int(ds) <= prev or int(ds) % prev or tile % int(ds):
            return None
        prev = int(ds)
    coarser = [int(ds) for ds in downsamples[1:]]
    shapes = [(math.ceil(slide.height / d), math.ceil(slide.width / d), 3) for d in coarser]
    if sum(math.prod(s) for s in shapes) > _CACHE_LIMIT_BYTES:
        return None
    return {d: np.empty(s, dtype=np.uint8) for d, s in zip(coarser, shapes, strict=True)}


def write_slide(
    path: Path,
    slide: SyntheticSlide,
    *,
    kind: str = "svs",
    tile: int = 256,
    downsamples: Sequence[int] = (1, 4),
    quality: int = 90,
    label_text_seed: int = 7,
) -> Path:
    """Write `slide` to `path` as a tiled JPEG pyramid; `kind` is "svs" (Aperio layout with a
    thumbnail and a label image) or "tiff" (generic tiled TIFF, pyramid only). Each coarser
    level is the box average of level 0 (computed from the level-0 tiles when `downsamples`
    nest and divide `tile`, else rendered)."""
    if kind not in ("svs", "tiff"):
        raise InvalidInputError(f"kind must be 'svs' or 'tiff', not {kind!r}")
    big = slide.width * slide.height * 3 > 2**31
    # coarser levels as box averages of level 0, rendered once (when they fit in memory)
    cache = _pyramid_cache(slide, downsamples, tile)
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        for i, ds in enumerate(downsamples):
            w, h = math.ceil(slide.width / ds), math.ceil(slide.height / ds)
            extra: dict[str, Any] = {}
            if slide.mpp is not None:
                res = 1e4 / (slide.mpp * ds)  # pixels per centimetre
                extra = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            if kind == "svs":
                desc = (
                    f"Aperio Image Library v12.0.15 \r\n{slide.width}x{slide.height} "
                    f"[0,0 {slide.width}x{slide.height}] ({tile}x{tile}) JPEG/RGB Q={quality}"
                )
                if slide.mpp is not None:
                    desc += f"|AppMag = {round(10 / slide.mpp)}|MPP = {slide.mpp:.4f}"
                extra["description"] = desc if i == 0 else f"{w}x{h} -> level {i}"
            data: Any
            if cache is None:
                data = _tiles(slide, ds, w, h, tile)
            elif i == 0:
                data = _tiles_with_pyramid(slide, w, h, tile, cache)
            else:
                data = iter(_array_tiles(cache[int(ds)], tile))
            tif.write(
                data,
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                subfiletype=1 if i else 0,
                metadata=None,
                **extra,
            )
            if kind == "svs" and i == 0:
                # Aperio puts a stripped thumbnail second
                scale = max(slide.width, slide.height) / 512
                tw, th = max(1, round(slide.width / scale)), max(1, round(slide.height / scale))
                tif.write(
                    slide.render(0, 0, tw, th, scale),
                    photometric="rgb",
                    compression="jpeg",
                    description=f"Aperio Image Library v12.0.15 \r\n{tw}x{th} thumbnail",
                    metadata=None,
                )
        if kind == "svs":
            tif.write(
                synthetic_label(label_text_seed),
                photometric="rgb",
                compression="lzw",
                subfiletype=1,
                description="Aperio Image Library v12.0.15 \r\nlabel 320x320",
                metadata=None,
            )
    return path


def _array_tiles(level: NDArray[np.uint8], tile: int) -> Iterator[NDArray[np.uint8]]:
    """Tiles of an in-memory level; edge tiles padded by repeating the last pixels (no JPEG
    ringing from a black margin into the image)."""
    h, w = level.shape[:2]
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            part = level[ty : ty + tile, tx : tx + tile]
            if part.shape[:2] != (tile, tile):
                fill = ((0, tile - part.shape[0]), (0, tile - part.shape[1]), (0, 0))
                part = np.pad(part, fill, mode="edge")
            yield part


# A conspicuous pattern no real tissue has: tests check it never reaches any output.
LABEL_MARKER_RGB = (0, 255, 0)


def synthetic_label(seed: int) -> NDArray[np.uint8]:
    """A stand-in label image (would carry patient identifiers): green checkerboard."""
    yy, xx = np.mgrid[0:320, 0:320]
    check = ((xx // 20 + yy // 20 + seed) % 2).astype(bool)
    img = np.zeros((320, 320, 3), dtype=np.uint8)
    img[check] = LABEL_MARKER_RGB
    return img
