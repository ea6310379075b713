"""Tissue texture borrowed from a real slide, for the textured benchmark (`synth --texture`).

Only the slide's pyramid is read (level 0 through the reader registry; never its label or
macro image). Its tissue, as optical density, is cut into square patches that are mostly
tissue; a generated slide's level-0 plane is covered by a lattice of cells, and each cell shows
one such patch under one of the eight flips and rotations of the square, both chosen by a hash
of the cell and the slide's seed. So, as for the drawn texture, any region renders alone and
identically at any downsample, and two slides of one set show different arrangements of the
same real tissue.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from slidemill.schemas.errors import InvalidInputError

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

TEXTURE_CELL_UM = 160.0
"""Side of a cell of the texture lattice (and of a source patch), µm."""
_MAX_SIDE = 6144
"""Largest side of the level-0 region read from the source slide (its centre), px."""
_TISSUE_SHARE = 0.85
"""Share of a source patch that must be tissue."""
_TISSUE_OD = 0.18
"""Summed optical density above which a source pixel counts as tissue (glass is ~0.05)."""
_NUCLEAR_QUANTILE = 0.85
"""Tissue pixels whose haematoxylin density lies above this quantile are taken as nuclei (the
hue drifts from purple towards blue-black as it rises: the darkest cores)."""


@dataclass(frozen=True, slots=True, eq=False)
class TextureSource:
    """A real slide's tissue as optical density, and where its tissue patches lie."""

    od: F32
    """Optical density per channel, at the generated slide's resolution. Shape: h x w x 3."""
    origins: NDArray[np.int64]
    """Top-left (x, y) of each patch that is mostly tissue. Shape: n x 2."""
    patch: int
    """Side of a patch (and of a texture cell), px."""
    nuclear_hue: tuple[float, float, float]
    """Unit direction of the optical density of the texture's nuclei (the hue of its
    haematoxylin-stained chromatin): the mean unit OD vector of its tissue pixels densest in
    haematoxylin."""


def _read_level0(path: Path) -> tuple[NDArray[np.uint8], float | None]:
    from slidemill.pipeline.slides import open_slide

    reader = open_slide(path)
    try:
        w, h = reader.dimensions
        cw, ch = min(w, _MAX_SIDE), min(h, _MAX_SIDE)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        rgb = reader.read_region((x0, y0), 0, (cw, ch))
        return np.ascontiguousarray(rgb[..., :3]), reader.mpp
    finally:
        reader.close()


@functools.lru_cache(maxsize=4)
def load_texture(path: str, mpp: float) -> TextureSource:
    """The tissue of the slide at `path`, resampled to `mpp` µm/px (from its recorded
    resolution; 0.5 when it records none). Raises `InvalidInputError` when it has too little
    tissue for even one patch."""
    source = Path(path)
    if not source.is_file():
        raise InvalidInputError(f"--texture {source}: no such slide file")
    rgb, src_mpp = _read_level0(source)
    scale = (src_mpp or 0.5) / mpp
    if abs(scale - 1.0) > 0.02:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0).astype(np.float32)
    patch = max(8, round(TEXTURE_CELL_UM / mpp))
    tissue = od.sum(axis=2) > _TISSUE_OD
    h, w = tissue.shape
    if h < patch or w < patch:
        raise InvalidInputError(
            f"--texture {source}: {w}x{h} px is smaller than one {patch}-px texture patch"
        )
    # share of tissue in every patch on a half-patch lattice, from an integral image
    integral = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = max(1, patch // 4)
    ys = np.arange(0, h - patch + 1, stride)
    xs = np.arange(0, w - patch + 1, stride)
    y0, x0 = ys[:, None], xs[None, :]
    count = (
        integral[y0 + patch, x0 + patch]
        - integral[y0, x0 + patch]
        - integral[y0 + patch, x0]
        + integral[y0, x0]
    )
    good = np.argwhere(count >= _TISSUE_SHARE * patch * patch)
    if good.shape[0] == 0:
        raise InvalidInputError(
            f"--texture {source}: no {patch}x{patch}-px region of it is "
            f"{_TISSUE_SHARE:.0%} tissue; choose a slide with more tissue"
        )
    origins = np.stack([xs[good[:, 1]], ys[good[:, 0]]], axis=1).astype(np.int64)
    return TextureSource(od, origins, patch, _nuclear_hue(od, tissue))


def _nuclear_hue(od: F32, tissue: NDArray[np.bool_]) -> tuple[float, float, float]:
    """`TextureSource.nuclear_hue` of the source's optical density (h x w x 3) and tissue mask;
    haematoxylin from skimage's H&E-DAB deconvolution."""
    from skimage.color import hed_from_rgb

    step = max(1, int(math.sqrt(tissue.size / 2e6)))  # a lattice of at most ~2M pixels suffices
    pixels = od[::step, ::step][tissue[::step, ::step]]
    haem = pixels @ np.asarray(hed_from_rgb, dtype=np.float32)[:, 0]
    nuclei = pixels[haem >= np.quantile(haem, _NUCLEAR_QUANTILE)]
    unit = nuclei / np.maximum(np.linalg.norm(nuclei, axis=1, keepdims=True), 1e-6)
    d = unit.mean(axis=0)
    d /= np.linalg.norm(d)
    return float(d[0]), float(d[1]), float(d[2])


def _hash(ix: NDArray[np.int64], iy: NDArray[np.int64], key: int) -> NDArray[np.uint32]:
    h = (ix.astype(np.uint32) * np.uint32(0x9E3779B1)) ^ np.uint32(key & 0xFFFFFFFF)
    h = h ^ (iy.astype(np.uint32) * np.uint32(0x85EBCA77))
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    out: NDArray[np.uint32] = h ^ (h >> np.uint32(16))
    return out


def sample_texture(source: TextureSource, xs: F64, ys: F64, key: int) -> F32:
    """Optical density of the texture at the level-0 grid `ys` x `xs` (nearest source pixel).
    Shape: ny x nx x 3, float32."""
    p = source.patch
    fx, fy = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    cx, cy = fx // p, fy // p
    u, v = fx - cx * p, fy - cy * p  # within the cell, 0..p-1
    h = _hash(cx[None, :], cy[:, None], key)
    k = (h >> np.uint32(3)).astype(np.int64) % source.origins.shape[0]
    d = (h & np.uint32(7)).astype(np.int64)
    uu = np.broadcast_to(u[None, :], d.shape)
    vv = np.broadcast_to(v[:, None], d.shape)
    # the eight symmetries of the square: transpose, then flip either axis
    swap = (d & 4) != 0
    a = np.where(swap, vv, uu)
    b = np.where(swap, uu, vv)
    a = np.where((d & 1) != 0, p - 1 - a, a)
    b = np.where((d & 2) != 0, p - 1 - b, b)
    sx = source.origins[k, 0] + a
    sy = source.origins[k, 1] + b
    out: F32 = source.od[sy, sx]
    return out


def stain_gain(
    stain: tuple[tuple[int, int, int], tuple[int, int, int]],
    base: tuple[tuple[int, int, int], tuple[int, int, int]],
) -> tuple[float, float, float]:
    """Per-channel factor on the source's optical density that carries a slide's stain
    perturbation (`random_stain` against its `base`): the mean ratio of the two stains'
    densities."""
    out = []
    for c in range(3):
        ratios = [
            math.log(max(s[c], 1) / 255.0) / math.log(max(b[c], 1) / 255.0)
            for s, b in zip(stain, base, strict=True)
        ]
        out.append(sum(ratios) / len(ratios))
    return out[0], out[1], out[2]
