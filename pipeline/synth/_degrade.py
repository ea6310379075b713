"""Degraded copies of generated slides, with the degradation as ground truth for slide QC:

    blur          Gaussian blur over all of the slide (out of focus)
    blur_part     the same over the left half only (part of the tissue out of focus)
    pen           marker strokes in blue, green and black across the tissue
    fluorescence  a fluorescence-like rendering: black background, nuclei in one (DAPI-blue)
                  channel, faint red autofluorescence of the stroma

Each copy is the source's level 0 read back, changed as a whole, and written as an SVS pyramid
(box averages) with the source's resolution, so the same reader and tissue detection see it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import tifffile
from numpy.typing import NDArray
from skimage import filters

from slidemill.pipeline.synth._tiff import _array_tiles
from slidemill.schemas.errors import InvalidInputError

DEGRADATIONS: Final = ("blur", "blur_part", "pen", "fluorescence")
"""What `degrade` can do to a slide (see the module docstring)."""

BLUR_SIGMA_UM = 3.0
"""Gaussian sigma of the blur, µm: a focus error that smears nuclei (~6–10 µm) into their
surroundings."""
PEN_WIDTH_UM = 40.0
"""Width of a marker stroke, µm (a fine marker tip is 0.3–1 mm on glass; thinner is harder)."""

_INKS = ((35, 65, 175), (45, 150, 65), (35, 35, 40))
"""Blue, green and black marker ink, as transmitted RGB."""
_HE = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])


def degrade(level0: NDArray[np.uint8], kind: str, mpp: float, seed: int = 0) -> NDArray[np.uint8]:
    """A degraded copy of a slide's level 0 (H, W, 3) at `mpp` µm/px (pure)."""
    if kind not in DEGRADATIONS:
        raise InvalidInputError(
            f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}"
        )
    if kind in ("blur", "blur_part"):
        out = level0.copy()
        cols = slice(None) if kind == "blur" else slice(0, level0.shape[1] // 2)
        sigma = BLUR_SIGMA_UM / mpp
        for c in range(3):
            part = out[:, cols, c].astype(np.float32)
            out[:, cols, c] = np.clip(filters.gaussian(part, sigma, preserve_range=True), 0, 255)
        return out
    if kind == "pen":
        return _pen(level0, mpp, seed)
    return _fluorescence(level0)


def _pen(level0: NDArray[np.uint8], mpp: float, seed: int) -> NDArray[np.uint8]:
    """Three wavy strokes, one per ink, across the slide; ink multiplies what lies under it."""
    h, w = level0.shape[:2]
    rng = np.random.default_rng(seed)
    out = level0.copy()
    half = PEN_WIDTH_UM / mpp / 2
    xs = np.arange(w, dtype=np.float64)
    for k, ink in enumerate(_INKS):
        y0 = h * (0.3 + 0.2 * k) + rng.uniform(-0.05, 0.05) * h
        amp, period = rng.uniform(0.03, 0.08) * h, rng.uniform(0.4, 0.9) * w
        centre = y0 + amp * np.sin(2 * math.pi * xs / period + rng.uniform(0, 2 * math.pi))
        for x0 in range(0, w, 512):  # column blocks keep the distance field small
            block = slice(x0, min(w, x0 + 512))
            ys = np.arange(h, dtype=np.float64)[:, None]
            on = np.abs(ys - centre[None, block]) <= half
            region = out[:, block]
            tinted = region.astype(np.float32) * (np.array(ink, np.float32) / 255.0)
            region[on] = tinted[on].astype(np.uint8)
    return out


def _fluorescence(level0: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Unmix H&E by optical density; haematoxylin glows blue (DAPI), eosin faint red."""
    unmix = np.linalg.pinv(_HE / np.linalg.norm(_HE, axis=1, keepdims=True))  # (3, 2)
    out = np.empty_like(level0)
    for y0 in range(0, level0.shape[0], 256):
        rows = level0[y0 : y0 + 256].astype(np.float32)
        od = -np.log10((rows + 1.0) / 256.0)
        conc = np.clip(od @ unmix.astype(np.float32), 0.0, None)
        h, e = conc[..., 0], conc[..., 1]
        glow = np.stack([70.0 * e, 18.0 * e + 10.0 * h, 260.0 * h], axis=-1) + 4.0
        out[y0 : y0 + 256] = np.clip(glow, 0, 255).astype(np.uint8)
    return out


def write_array_slide(
    path: Path,
    level0: NDArray[np.uint8],
    mpp: float,
    *,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
) -> Path:
    """Write level 0 (H, W, 3) as an Aperio-style SVS pyramid of box averages."""
    h, w = level0.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=w * h * 3 > 2**31) as tif:
        level = level0
        for i, ds in enumerate(downsamples):
            if i:
                step = ds // downsamples[i - 1]
                level = _box_average(level, step)
            res = 1e4 / (mpp * ds)
            extra: dict[str, Any] = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            desc = (
                f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
                f"JPEG/RGB Q={quality}|AppMag = {round(10 / mpp)}|MPP = {mpp:.4f}"
            )
            lh, lw = level.shape[:2]
            tif.write(
                iter(_array_tiles(level, tile)),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                subfiletype=1 if i else 0,
                description=desc if i == 0 else f"{lw}x{lh} -> level {i}",
                metadata=None,
                **extra,
            )
    return path


def _box_average(level: NDArray[np.uint8], step: int) -> NDArray[np.uint8]:
    h, w = level.shape[:2]
    hh, ww = math.ceil(h / step), math.ceil(w / step)
    padded = np.pad(level, ((0, hh * step - h), (0, ww * step - w), (0, 0)), mode="edge")
    blocks = padded.reshape(hh, step, ww, step, 3).astype(np.float32)
    return np.clip(blocks.mean(axis=(1, 3)) + 0.5, 0, 255).astype(np.uint8)


def degraded_copy(source: Path, kind: str, out: Path, seed: int = 0) -> Path:
    """`out/<stem>-<kind>.svs`: the slide file `source` (0.5 µm/px level 0 read back), degraded."""
    with tifffile.TiffFile(source) as tif:
        page = tif.pages.first
        level0 = page.asarray()
        x_res = page.tags["XResolution"].value
    mpp = 1e4 / (x_res[0] / x_res[1])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{source.stem}-{kind}.svs"
    return write_array_slide(path, degrade(level0, kind, mpp, seed), mpp)


def write_degraded_set(
    sources: Sequence[Path], out: Path, kinds: Sequence[str] = DEGRADATIONS, seed: int = 0
) -> list[tuple[Path, str]]:
    """A degraded copy of each source slide per kind in `out`, and `out/degradations.csv`
    (slide_id, source, degradation): the ground truth of which flag each copy should earn."""
    written = []
    for i, source in enumerate(sources):
        for kind in kinds:
            written.append((degraded_copy(source, kind, out, seed + i), kind))
    with (out / "degradations.csv").open("w", newline="") as f:
        table = csv.writer(f)
        table.writerow(["slide_id", "source", "degradation"])
        for (path, kind), source in zip(written, [s for s in sources for _ in kinds], strict=True):
            table.writerow([path.stem, source.name, kind])
    return written
