"""Generated pyramidal slides with a known tissue layout, for tests, demos and benchmarks.

Pixels are a pure function of level-0 coordinates, so every pyramid level shows the same tissue
and a test knows exactly where tissue is. Slides are written tile by tile (memory stays at a few
tiles whatever the slide size) as JPEG-compressed tiled TIFF: Aperio-style SVS (with mpp, a
thumbnail and a synthetic label image) or a generic tiled TIFF.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray

BACKGROUND = (243, 241, 245)


@dataclass(frozen=True, slots=True)
class Ellipse:
    """A tissue region in level-0 pixels."""

    cx: float
    """Centre x."""
    cy: float
    """Centre y."""
    rx: float
    """Half-width."""
    ry: float
    """Half-height."""

    def contains(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.bool_]:
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1.0


@dataclass(frozen=True, slots=True)
class SyntheticSlide:
    """What to draw: size, resolution and where the tissue is."""

    width: int
    """Level-0 width in pixels."""
    height: int
    """Level-0 height in pixels."""
    mpp: float | None
    """Level-0 µm/px; None writes no resolution at all."""
    tissue: tuple[Ellipse, ...] = ()
    """Tissue regions; the rest is glass."""
    seed: int = 0
    """Seed of the texture noise."""
    stain: tuple[tuple[int, int, int], tuple[int, int, int]] = field(
        default=((226, 150, 190), (110, 60, 150))
    )
    """Eosin-like stroma colour and haematoxylin-like nuclei colour."""

    def tissue_at(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.bool_]:
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for e in self.tissue:
            inside |= e.contains(x, y)
        return inside

    def render(self, x0: float, y0: float, w: int, h: int, ds: float) -> NDArray[np.uint8]:
        """RGB pixels of a `w` × `h` region whose top-left is level-0 (`x0`, `y0`), at downsample
        `ds`; each pixel is sampled at its centre in level-0 coordinates."""
        xs = x0 + (np.arange(w) + 0.5) * ds
        ys = y0 + (np.arange(h) + 0.5) * ds
        x, y = np.meshgrid(xs, ys)
        tissue = self.tissue_at(x, y)
        stroma = np.array(self.stain[0], dtype=np.float64)
        nuclei = np.array(self.stain[1], dtype=np.float64)
        # nuclei: a smooth periodic field at ~12 µm scale thresholded into blobs
        period = 24.0
        phase = self.seed * 1.7
        field_ = np.sin(x / period * 2.1 + phase) * np.sin(y / period * 1.9 - phase) + 0.5 * np.sin(
            (x + y) / period * 0.7
        )
        nuclear = np.clip((field_ - 0.6) * 3.0, 0.0, 1.0)[..., None]
        rgb = stroma * (1 - nuclear) + nuclei * nuclear
        rng = np.random.default_rng(
            [self.seed, int(x0) & 0xFFFFFFFF, int(y0) & 0xFFFFFFFF, int(ds * 16)]
        )
        rgb = rgb + rng.normal(0, 6, rgb.shape)
        bg = np.array(BACKGROUND, dtype=np.float64) + rng.normal(0, 1.5, rgb.shape)
        out = np.where(tissue[..., None], rgb, bg)
        return np.clip(out, 0, 255).astype(np.uint8)

    def tissue_fraction(self, samples: int = 400) -> float:
        """Fraction of the slide area that is tissue (on a `samples`² lattice)."""
        xs = (np.arange(samples) + 0.5) * self.width / samples
        ys = (np.arange(samples) + 0.5) * self.height / samples
        x, y = np.meshgrid(xs, ys)
        return float(self.tissue_at(x, y).mean())


def _tiles(
    slide: SyntheticSlide, ds: float, width: int, height: int, tile: int
) -> Iterator[NDArray[np.uint8]]:
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            yield slide.render(tx * ds, ty * ds, tile, tile, ds)


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
    thumbnail and a label image) or "tiff" (generic tiled TIFF, pyramid only)."""
    if kind not in ("svs", "tiff"):
        raise ValueError(f"kind must be 'svs' or 'tiff', not {kind!r}")
    big = slide.width * slide.height * 3 > 2**31
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
            tif.write(
                _tiles(slide, ds, w, h, tile),
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


# A conspicuous pattern no real tissue has: tests check it never reaches any output.
LABEL_MARKER_RGB = (0, 255, 0)


def synthetic_label(seed: int) -> NDArray[np.uint8]:
    """A stand-in label image (would carry patient identifiers): green checkerboard."""
    yy, xx = np.mgrid[0:320, 0:320]
    check = ((xx // 20 + yy // 20 + seed) % 2).astype(bool)
    img = np.zeros((320, 320, 3), dtype=np.uint8)
    img[check] = LABEL_MARKER_RGB
    return img


def write_demo_set(out: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` generated SVS slides, 4096 × 3072 at 0.5 µm/px, with 1–3 random tissue regions each;
    the last of three or more is blank glass (it will be skipped: no tissue)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = 4096, 3072
        blank = n >= 3 and i == n - 1
        regions = tuple(
            Ellipse(
                cx=float(rng.uniform(0.3, 0.7) * w),
                cy=float(rng.uniform(0.3, 0.7) * h),
                rx=float(rng.uniform(0.12, 0.3) * w),
                ry=float(rng.uniform(0.12, 0.3) * h),
            )
            for _ in range(0 if blank else int(rng.integers(1, 4)))
        )
        slide = SyntheticSlide(w, h, 0.5, regions, seed=seed * 1000 + i)
        paths.append(write_slide(out / f"synthetic-{i:03d}.svs", slide, kind="svs"))
    return paths
