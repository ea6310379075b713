"""Slide QC on pixels the pipeline reads anyway (pure): per tile, focus, ink and glass; per
slide, on the 8 µm/px thumbnail, tissue area, ink, and whether it looks like brightfield H&E.

The limits are set for brightfield H&E at 0.25–2 µm/px and checked against `slidemill synth`'s
clean and degraded slides and the real sample slide (tests/pipeline/tissue/test_qc.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from slidemill.schemas import Flag, FlagCode

F32 = NDArray[np.float32]

BLUR_LIMIT = 2e-3
"""A tile whose grey tissue pixels' Laplacian variance (intensities 0..1) is below this is out of
focus: sharp H&E nuclei edges give 5e-3 and more at the model's resolution."""
BLURRY_SHARE_LIMIT = 0.25
"""A slide with more than this share of its tiles out of focus is flagged `blur`."""
PEN_TILE_LIMIT = 0.05
"""A tile with more ink than this share of its pixels fails QC."""
PEN_SLIDE_LIMIT = 0.01
"""A slide with more ink than this share of its tissue (and ink) is flagged `pen_marks`."""
BACKGROUND_LUMINANCE_MIN = 0.6
"""Brightfield glass is bright; below this median luminance off tissue, not brightfield."""
STAIN_RESIDUAL_MAX = 0.35
"""Share of the tissue's optical density outside the H&E plane above which it is not H&E."""
TISSUE_OD_MAX = 1.5
"""Mean tissue optical density above which the slide is too dark for brightfield H&E."""
MIN_USABLE_TILES = 4
"""A slide with fewer tiles passing QC is flagged `too_few_tiles`."""
MIN_USABLE_SHARE = 0.25
"""...and so is one where fewer than this share of its tiles pass."""

# Ruifrok & Johnston's optical-density vectors of haematoxylin and eosin (RGB, unit length).
_HE = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])
_HE = _HE / np.linalg.norm(_HE, axis=1, keepdims=True)


def glass(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Pixels (..., 3) that are bare glass: bright and grey."""
    return _glass(*_channels(rgb))


def ink(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Pixels (..., 3) of marker ink: saturated blue or green, or near black. Haematoxylin is
    purple (its red stays within 60 of its blue), so nuclei are not ink."""
    return _ink(*_channels(rgb))


# Elementwise over the three channel planes rather than min/max/mean over the last axis: numpy
# reduces a length-3 axis far slower than it combines three arrays, and the results are the same
# integers (and, for the grey level, the same float32 values: the channel sum is exact).


def _channels(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.int16], ...]:
    return tuple(rgb[..., c].astype(np.int16) for c in range(3))


def _glass(r: NDArray[np.int16], g: NDArray[np.int16], b: NDArray[np.int16]) -> NDArray[np.bool_]:
    lo = np.minimum(np.minimum(r, g), b)
    hi = np.maximum(np.maximum(r, g), b)
    return (lo >= 200) & (hi - lo <= 30)


def _ink(r: NDArray[np.int16], g: NDArray[np.int16], b: NDArray[np.int16]) -> NDArray[np.bool_]:
    blue = (b - r > 70) & (b - g > 20) & (r < 90)
    green = (g - r > 20) & (g - b > 10)
    black = np.maximum(np.maximum(r, g), b) < 40
    return blue | green | black


def _share(mask: NDArray[np.bool_]) -> float:
    """`mask.mean()` without the float64 pass: the same correctly rounded count / size."""
    return np.count_nonzero(mask) / mask.size


@dataclass(frozen=True, slots=True, eq=False)
class TileQC:
    """QC measurements of a block of tiles (`eq=False`: arrays)."""

    blur: F32
    """Laplacian variance of grey tissue pixels, NaN for a tile of (nearly) all glass. Shape: N."""
    pen: F32
    """Share of pixels that is ink. Shape: N."""
    background: F32
    """Share of pixels that is glass. Shape: N."""


def tile_qc(tiles: NDArray[np.uint8]) -> TileQC:
    """Focus, ink and glass of tiles (N, T, T, 3) uint8 RGB."""
    n = tiles.shape[0]
    blur = np.full(n, np.nan, dtype=np.float32)
    pen = np.empty(n, dtype=np.float32)
    background = np.empty(n, dtype=np.float32)
    for i in range(n):
        r, g, b = _channels(tiles[i])
        bare = _glass(r, g, b)
        pen[i] = _share(_ink(r, g, b))
        background[i] = _share(bare)
        # the mean of the three channels as float32, as `astype(float32).mean(-1)` gives it
        grey = (r + g + b).astype(np.float32) / 3 / 255.0
        lap = (
            grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
            - 4.0 * grey[1:-1, 1:-1]
        )  # fmt: skip
        tissue = ~bare[1:-1, 1:-1]
        if _share(tissue) >= 0.1:
            blur[i] = float(lap[tissue].var())
    return TileQC(blur, pen, background)


def usable_tiles(blur: F32, pen: F32) -> NDArray[np.bool_]:
    """Tiles passing QC: in focus (a tile too bare to measure counts as in focus: tissue
    filtering already decided it has tissue) and without much ink."""
    sharp = ~(blur < BLUR_LIMIT)  # NaN compares False: unmeasured is not blurry
    return sharp & (pen <= PEN_TILE_LIMIT)


@dataclass(frozen=True, slots=True)
class ThumbnailQC:
    """Slide-wide QC from the 8 µm/px thumbnail and its tissue mask."""

    tissue_area_mm2: float
    """Area of the tissue mask."""
    background_luminance: float
    """Median luminance (0..1) off tissue."""
    tissue_od: float
    """Mean optical density (log10, mean of channels) of tissue pixels."""
    stain_residual: float
    """Share of the tissue's mean OD vector outside the H&E plane, 0..1."""
    pen_fraction: float
    """Ink pixels over tissue-or-ink pixels."""


def thumbnail_qc(thumb: NDArray[np.uint8], mask: NDArray[np.bool_], mpp: float) -> ThumbnailQC:
    """Measure a thumbnail (h, w, 3) at `mpp` µm/px with its tissue mask (h, w)."""
    rgb = thumb[..., :3]
    luminance = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
    off = ~mask
    if off.mean() >= 0.02:
        background = float(np.median(luminance[off]))
    else:  # tissue edge to edge: the brightest pixels are the nearest thing to glass
        background = float(np.percentile(luminance, 95))
    pen = ink(rgb)
    covered = mask | pen
    pen_fraction = float(pen.sum() / covered.sum()) if covered.any() else 0.0
    tissue = mask & ~pen
    if tissue.any():
        od = -np.log10((rgb[tissue].astype(np.float64) + 1.0) / 256.0)
        mean_od = od.mean(axis=0)
        tissue_od = float(mean_od.mean())
        coef, *_ = np.linalg.lstsq(_HE.T, mean_od, rcond=None)
        norm = float(np.linalg.norm(mean_od))
        residual = float(np.linalg.norm(mean_od - _HE.T @ coef) / norm) if norm > 0 else 1.0
    else:
        tissue_od, residual = 0.0, 0.0
    return ThumbnailQC(
        tissue_area_mm2=float(mask.sum()) * (mpp / 1000.0) ** 2,
        background_luminance=min(1.0, max(0.0, background)),
        tissue_od=max(0.0, tissue_od),
        stain_residual=min(1.0, max(0.0, residual)),
        pen_fraction=min(1.0, pen_fraction),
    )


def qc_flags(
    thumb: ThumbnailQC,
    blur: F32,
    pen: F32,
    ood_score: float | None = None,
    ood_threshold: float | None = None,
) -> tuple[Flag, ...]:
    """The flags a slide earns: its thumbnail measures, its tiles' blur and ink (N,), and its
    out-of-distribution score against the bundle's threshold (when the bundle has one)."""
    flags: list[Flag] = []
    if ood_score is not None and ood_threshold is not None and ood_score > ood_threshold:
        flags.append(
            Flag(
                code=FlagCode.OUT_OF_DISTRIBUTION,
                reason=f"OOD score {ood_score:.3g} above the training slides' {ood_threshold:.3g}",
            )
        )
    not_bf = []
    if thumb.background_luminance < BACKGROUND_LUMINANCE_MIN:
        not_bf.append(
            f"background luminance {thumb.background_luminance:.2f} < "
            f"{BACKGROUND_LUMINANCE_MIN} (dark, not glass)"
        )
    if thumb.tissue_od > TISSUE_OD_MAX:
        not_bf.append(f"tissue optical density {thumb.tissue_od:.2f} > {TISSUE_OD_MAX}")
    if thumb.stain_residual > STAIN_RESIDUAL_MAX:
        not_bf.append(
            f"{thumb.stain_residual:.0%} of the stain outside the H&E plane "
            f"(> {STAIN_RESIDUAL_MAX:.0%})"
        )
    if not_bf:
        # focus and ink are measured as on brightfield glass: on anything else they mislead
        flags.append(Flag(code=FlagCode.NOT_BRIGHTFIELD, reason="; ".join(not_bf)))
        return tuple(flags)
    n = blur.shape[0]
    blurry = float(np.mean(blur < BLUR_LIMIT)) if n else 0.0
    if blurry > BLURRY_SHARE_LIMIT:
        flags.append(
            Flag(
                code=FlagCode.BLUR,
                reason=f"{blurry:.0%} of {n} tiles out of focus (> {BLURRY_SHARE_LIMIT:.0%})",
            )
        )
    if thumb.pen_fraction > PEN_SLIDE_LIMIT:
        flags.append(
            Flag(
                code=FlagCode.PEN_MARKS,
                reason=f"ink over {thumb.pen_fraction:.1%} of the tissue (> {PEN_SLIDE_LIMIT:.0%})",
            )
        )
    usable = int(usable_tiles(blur, pen).sum())
    if n and (usable < MIN_USABLE_TILES or usable < MIN_USABLE_SHARE * n):
        flags.append(
            Flag(
                code=FlagCode.TOO_FEW_TILES,
                reason=f"{usable} of {n} tiles pass QC (at least {MIN_USABLE_TILES} and "
                f"{MIN_USABLE_SHARE:.0%} needed)",
            )
        )
    return tuple(flags)
