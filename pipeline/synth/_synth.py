"""Generated pyramidal slides with a known tissue layout and known lesions, for tests, demos and
benchmarks.

Pixels are a pure function of level-0 coordinates, so every pyramid level shows the same tissue
and a test knows exactly where tissue and lesions are. Nothing is stored: every random choice of
the texture (a nucleus, a gland, a fibre bundle) is a hash of a coarse cell of level-0
coordinates, so any region renders alone, identically, at any downsample.

The texture is H&E-like: pink stroma with wavy collagen fibres whose direction drifts across the
slide, scattered small dark nuclei (round and spindle-shaped, the spindles along the fibres),
glands (a pale lumen in a rim of epithelium and nuclei), and a slowly varying staining intensity
and cellularity. Colours are mixed in optical density (Beer–Lambert) from an eosin and a
haematoxylin colour, so a slide's stain is two RGB colours.

Two kinds of planted region, both irregular `Blob`s inside the tissue:

- lesions: the *structure* changes (crowded, enlarged, pleomorphic, overlapping vesicular
  nuclei; no fibres, no glands) while the mean colour stays within that of normal tissue
  (halfway to a mimic's, measured and matched for each stain: see `_lesion_gain`), so a colour
  threshold cannot find them;
- mimics (hard negatives): the *colour* changes (darker, more purple, as lesions are imagined
  to be) while the structure stays normal.

Slides are written tile by tile as JPEG-compressed tiled TIFF: Aperio-style SVS (with mpp, a
thumbnail and a synthetic label image) or a generic tiled TIFF. Coarser levels are box averages
of level 0.

`write_benchmark_set` (the `slidemill synth` command) writes a labelled set into one folder:

    synthetic-NNN.svs          0.5 µm/px, levels at 0.5, 2 and 8 µm/px
    synthetic-NNN.mask.png     lesion mask at 8 µm/px (`MASK_MPP`), 255 = lesion; pixel (i, j)
                               covers level-0 [16j, 16j+16) x [16i, 16i+16) and holds the
                               truth at its centre
    synthetic-NNN.truth.json   label, lesions and look-alikes (level-0 px and µm), tissue,
                               stain, seed, the mask's file, resolution and size
                               (`load_truth` rebuilds the slide from it)
    labels.csv                 slide_id,path,label (path relative to the folder;
                               label negative or positive)

`SyntheticSlide.lesion_fraction` gives the true lesion share of any level-0 box.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from slidemill.pipeline.synth._texture import load_texture, sample_texture, stain_gain
from slidemill.schemas.errors import InvalidInputError

BACKGROUND = (243, 241, 245)
MASK_MPP = 8.0
"""Resolution of the ground-truth lesion masks written beside benchmark slides, µm/px."""

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

# µm/px assumed for the texture scale of a slide that records no resolution.
_DEFAULT_MPP = 0.5
# Samples per side of one shading block: keeps every temporary array in the CPU cache.
_BLOCK = 256
# Coarser levels of `write_slide` are box averages of the level-0 tiles, kept in memory up to
# this size; beyond it each level is rendered on its own (slower, memory stays at a few tiles).
_CACHE_LIMIT_BYTES = 512 * 2**20

# Texture scales (µm) and stain densities (relative to the slide's stain colours).
_NUCLEUS_CELL = 12.0
"""Cell of the normal-nucleus lattice: at most one nucleus per cell, wholly inside it."""
_NUCLEUS_PROB = (0.08, 0.45)
"""Chance a cell holds a nucleus: a + b · cellularity^1.5, cellularity a smooth field in 0..1."""
_LESION_CELL = 11.0
"""Cell of the lesion-nucleus lattice; those nuclei may reach into the neighbouring cells."""
_LESION_PROB = 0.85
"""Chance a lesion cell holds a nucleus (crowding)."""
_LESION_SOLID = (0.25, 0.25)
"""Density of a lesion nucleus's centre, a + b·u (vesicular: pale)."""
_LESION_RIM = (0.2, 0.4)
"""Extra density at a lesion nucleus's membrane, a + b·u (pleomorphic chromatin)."""
_LESION_EDGE = 12.0
"""Width of a lesion's soft border in the texture (the truth is the sharp boundary)."""
_LESION_EOSIN = 0.83
"""Eosin of the cytoplasm between lesion nuclei (no fibres)."""
_LESION_HAEM = 0.008
"""Background haematoxylin between lesion nuclei."""
_LESION_NUCLEUS_EOSIN = 0.6
"""Eosin a lesion nucleus displaces (normal nuclei: 0.6)."""
_LESION_COLOUR = 0.5
"""Where a lesion's mean colour lies between normal tissue's (0) and a look-alike's (1)."""
_LESION_TONE = 0.1
"""Spread of the per-lesion eosin (±) and twice that of nuclear density."""
_HUE_DRIFT = (0.3, 0.0, -0.3)
"""Relative change of the haematoxylin's optical density per channel across the hue field."""
_STROMA_EOSIN = 0.6
_FIBRE_EOSIN = 0.8
_STROMA_HAEM = 0.14
_MIMIC_HAEM = 0.035
"""Haematoxylin a mimic adds: darker and bluer, like a lesion is imagined to be."""
_MIMIC_EOSIN = 0.02
_MIMIC_EDGE = 30.0
_GLAND_CELL = 190.0
"""Cell of the gland lattice: at most one gland per cell, wholly inside it."""
_GLAND_PROB = 0.45
_LUMEN = 0.3
"""q below which a gland is lumen (the inner ~55% of its radius)."""
_FIBRE_WAVELENGTH = 7.0
_FIELD_SPACING = 6.0
"""Lattice on which lesion and mimic weights are sampled, then interpolated per pixel."""


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

    def contains(self, x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.bool_]:
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1.0


@dataclass(frozen=True, slots=True)
class Blob:
    """An irregular star-shaped region in level-0 pixels, bounded by
    r(φ) = radius · (1 + Σₖ aₖ cos(k φ + pₖ)), k = 2, 3, …"""

    cx: float
    """Centre x."""
    cy: float
    """Centre y."""
    radius: float
    """Mean radius."""
    harmonics: tuple[tuple[float, float], ...] = ()
    """(aₖ, pₖ) for k = 2, 3, …; Σ|aₖ| < 1 keeps the radius positive."""

    @property
    def max_radius(self) -> float:
        return self.radius * (1.0 + sum(abs(a) for a, _ in self.harmonics))

    def radius_at(self, angle: NDArray[Any]) -> NDArray[np.float64]:
        r = np.ones_like(angle, dtype=np.float64)
        for k, (a, p) in enumerate(self.harmonics, start=2):
            r += a * np.cos(k * angle + p)
        return self.radius * r

    def depth(self, x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.float64]:
        """r(φ) − distance from the centre, in pixels: positive inside, 0 on the boundary."""
        dx, dy = x - self.cx, y - self.cy
        return self.radius_at(np.arctan2(dy, dx)) - np.hypot(dx, dy)

    def contains(self, x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.bool_]:
        return self.depth(x, y) >= 0.0

    def bbox(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 enclosing the blob grown by `margin`."""
        r = self.max_radius + margin
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def area(self) -> float:
        """Area in level-0 pixels² (½∮r² dφ)."""
        phi = np.linspace(0.0, 2 * math.pi, 2048, endpoint=False)
        return float(0.5 * np.mean(self.radius_at(phi) ** 2) * 2 * math.pi)


@dataclass(frozen=True, slots=True)
class SyntheticSlide:
    """What to draw: size, resolution, where the tissue is, and what is planted in it."""

    width: int
    """Level-0 width in pixels."""
    height: int
    """Level-0 height in pixels."""
    mpp: float | None
    """Level-0 µm/px; None writes no resolution at all (the texture then assumes 0.5)."""
    tissue: tuple[Ellipse, ...] = ()
    """Tissue regions; the rest is glass."""
    seed: int = 0
    """Seed of the texture (nuclei, fibres, glands, staining intensity, grain)."""
    stain: tuple[tuple[int, int, int], tuple[int, int, int]] = field(
        default=((226, 150, 190), (110, 60, 150))
    )
    """Eosin-like stroma colour and haematoxylin-like nuclei colour, each at unit density."""
    lesions: tuple[Blob, ...] = ()
    """Lesions: abnormal structure, a colour within that of normal tissue. Inside the tissue."""
    mimics: tuple[Blob, ...] = ()
    """Hard negatives: lesion-like (darker, more purple) colour, normal structure."""
    texture: str | None = None
    """A real slide whose tissue texture fills the tissue (`_texture`); None = drawn texture."""

    @property
    def label(self) -> str:
        """The slide's class: positive when it has a lesion, else negative."""
        return "positive" if self.lesions else "negative"

    def tissue_at(self, x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.bool_]:
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for e in self.tissue:
            inside |= e.contains(x, y)
        return inside

    def lesion_at(self, x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.bool_]:
        """Whether level-0 points lie in a lesion (the sharp boundary: the ground truth)."""
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for blob in self.lesions:
            inside |= blob.contains(x, y)
        return inside

    def lesion_fraction(self, x0: float, y0: float, w: float, h: float, samples: int = 64) -> float:
        """True fraction of the level-0 box (`x0`, `y0`, `w`, `h`) inside lesions, on a lattice of
        at most `samples`² points at the centres of equal cells (exact to ~1/`samples`)."""
        nx = max(1, min(samples, math.ceil(w)))
        ny = max(1, min(samples, math.ceil(h)))
        xs = x0 + (np.arange(nx) + 0.5) * (w / nx)
        ys = y0 + (np.arange(ny) + 0.5) * (h / ny)
        return float(self.lesion_at(xs[None, :], ys[:, None]).mean())

    def mask_shape(self, mask_mpp: float = MASK_MPP) -> tuple[int, int]:
        """Rows and columns of `lesion_mask(mask_mpp)`."""
        ds = mask_mpp / self.texture_mpp
        return math.ceil(self.height / ds), math.ceil(self.width / ds)

    def lesion_mask(self, mask_mpp: float = MASK_MPP) -> NDArray[np.bool_]:
        """Ground-truth lesion mask at `mask_mpp` µm/px: pixel (i, j) covers level-0
        [j·d, (j+1)·d) × [i·d, (i+1)·d), d = mask_mpp / mpp, and is True when its centre lies in
        a lesion."""
        ds = mask_mpp / self.texture_mpp
        rows, cols = self.mask_shape(mask_mpp)
        xs = (np.arange(cols) + 0.5) * ds
        ys = (np.arange(rows) + 0.5) * ds
        return self.lesion_at(xs[None, :], ys[:, None])

    @property
    def texture_mpp(self) -> float:
        """µm/px the texture is drawn at: `mpp`, or 0.5 when the slide records none."""
        return self.mpp if self.mpp is not None else _DEFAULT_MPP

    def render(
        self, x0: float, y0: float, w: int, h: int, ds: float, *, samples: int = 4
    ) -> NDArray[np.uint8]:
        """RGB pixels of a `w` × `h` region whose top-left is level-0 (`x0`, `y0`), at downsample
        `ds`. Below level 0 each pixel is the mean of up to `samples` × `samples` samples over
        its footprint (at ds = 4 and 4 samples exactly the level-0 pixels it covers), so levels
        agree; that costs up to the level-0 rendering of the footprint (1 is 16x cheaper,
        anti-aliased but not the exact mean)."""
        return _planes_to_uint8(_render_planes(self, x0, y0, w, h, ds, samples))

    def render_float(
        self, x0: float, y0: float, w: int, h: int, ds: float, *, samples: int = 4
    ) -> F32:
        """`render` before rounding. Shape: h x w x 3, float32."""
        out = np.empty((h, w, 3), dtype=np.float32)
        planes = _render_planes(self, x0, y0, w, h, ds, samples)
        for c in range(3):
            out[..., c] = planes[c]
        return out

    def tissue_fraction(self, samples: int = 400) -> float:
        """Fraction of the slide area that is tissue (on a `samples`² lattice)."""
        xs = (np.arange(samples) + 0.5) * self.width / samples
        ys = (np.arange(samples) + 0.5) * self.height / samples
        x, y = np.meshgrid(xs, ys)
        return float(self.tissue_at(x, y).mean())


def _planes_to_uint8(planes: F32) -> NDArray[np.uint8]:
    """Float RGB planes (3 x h x w) as rounded uint8 pixels (h x w x 3)."""
    out = np.empty((*planes.shape[1:], 3), dtype=np.uint8)
    for c in range(3):
        out[..., c] = np.clip(planes[c] + 0.5, 0.0, 255.0)
    return out


def _render_planes(
    slide: SyntheticSlide, x0: float, y0: float, w: int, h: int, ds: float, samples: int = 4
) -> F32:
    """`render` as float RGB planes (colour last is slow to compute in numpy). Shape: 3 x h x w."""
    s = 1 if ds <= 1.0 else max(1, min(math.ceil(ds - 1e-9), samples))
    step = ds / s
    out = np.empty((3, h, w), dtype=np.float32)
    block = max(1, _BLOCK // s)
    for by in range(0, h, block):
        bh = min(block, h - by)
        ys = (y0 + by * ds + (np.arange(bh * s) + 0.5) * step).astype(np.float64)
        for bx in range(0, w, block):
            bw = min(block, w - bx)
            xs = (x0 + bx * ds + (np.arange(bw * s) + 0.5) * step).astype(np.float64)
            out[:, by : by + bh, bx : bx + bw] = _box(_shade(slide, xs, ys, max(step, 1.0)), s)
    return out


# ---------------------------------------------------------------------------------------------
# Hashing and noise: the randomness is a function of integer lattice coordinates.

_GOLDEN = 0x9E3779B1
_MASK64 = 2**64 - 1
"""Seeds are masked to 64 bits: numpy's seed sequences take no negative numbers."""


def _key(seed: int, salt: int) -> int:
    return (seed * _GOLDEN + salt * 0x85EBCA77 + 0x27D4EB2F) & 0xFFFFFFFF


def _mix(h: NDArray[np.uint32]) -> NDArray[np.uint32]:
    # lowbias32 (C. Wellons): full avalanche in a handful of uint32 operations
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _uniform(ix: NDArray[np.int64], iy: NDArray[np.int64], key: int) -> F32:
    """A uniform [0, 1) value per integer lattice point (`ix` broadcast against `iy`)."""
    hx = _mix(ix.astype(np.uint32) ^ np.uint32(key))
    h = _mix(hx ^ (iy.astype(np.uint32) * np.uint32(_GOLDEN)))
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 2**24)


def _weights(coords: F64, spacing: float, smooth: bool) -> tuple[F32, NDArray[np.int64]]:
    """Interpolation matrix (n x m) from lattice points `spacing` apart onto `coords`, and the m
    lattice indices."""
    t = coords / spacing
    i = np.floor(t)
    f = t - i
    if smooth:
        f = f * f * (3.0 - 2.0 * f)
    i0 = int(i.min())
    idx = (i - i0).astype(np.int64)
    m = int(idx.max()) + 2
    w = np.zeros((coords.size, m), dtype=np.float32)
    rows = np.arange(coords.size)
    w[rows, idx] = 1.0 - f
    w[rows, idx + 1] = f
    return w, np.arange(i0, i0 + m, dtype=np.int64)


def _matmul(a: F32, b: F32) -> F32:
    """a @ b in row chunks small enough that OpenBLAS stays on one thread: above ~2.6e5
    multiply-adds it hands the product to a thread pool, which on a busy machine costs far more
    than the work itself."""
    rows = max(1, 2**17 // max(1, a.shape[1] * b.shape[1]))
    if a.shape[0] <= rows:
        out: F32 = a @ b
        return out
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    for i in range(0, a.shape[0], rows):
        np.matmul(a[i : i + rows], b, out=out[i : i + rows])
    return out


def _noise(xs: F64, ys: F64, spacing: float, key: int) -> F32:
    """Smooth value noise in [0, 1] with features `spacing` px apart on the grid `ys` x `xs`:
    hashed lattice values interpolated by two small matrix products (no per-pixel hashing)."""
    wx, ix = _weights(xs, spacing, smooth=True)
    wy, iy = _weights(ys, spacing, smooth=True)
    v = _uniform(ix[None, :], iy[:, None], key)
    return _matmul(_matmul(wy, v), np.ascontiguousarray(wx.T))


@functools.lru_cache(maxsize=16)
def _grain(seed: int) -> F32:
    """A 256 x 256 tile of per-pixel sensor grain repeated across the slide: a period of 128 µm
    is invisible under the texture, and costs a gather instead of a hash per pixel."""
    return (
        np.random.default_rng([seed & _MASK64, 91]).standard_normal((256, 256)).astype(np.float32)
    )


@functools.lru_cache(maxsize=16)
def _fibre_angles(seed: int) -> tuple[float, float]:
    """The two directions (radians) the slide's collagen stripes are blended from."""
    a, b = np.random.default_rng([seed & _MASK64, 7]).uniform(0.0, math.pi, 2)
    return float(a), float(b)


def _od(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """Optical density per channel of a colour at unit stain density."""
    r, g, b = (-math.log(max(c, 1) / 255.0) for c in rgb)
    return r, g, b


def _box(planes: F32, s: int) -> F32:
    """Mean over s x s blocks of each plane. Shape: c x (s·h) x (s·w) -> c x h x w."""
    if s == 1:
        return planes
    a = planes[:, :, 0::s].copy()
    for k in range(1, s):
        a += planes[:, :, k::s]
    b = a[:, 0::s].copy()
    for k in range(1, s):
        b += a[:, k::s]
    b *= np.float32(1.0 / (s * s))
    return b


# ---------------------------------------------------------------------------------------------
# Texture.


def _blob_weight(
    blobs: Sequence[Blob], x: F64, y: F64, edge: float, values: Sequence[float] | None = None
) -> F32 | None:
    """Soft membership in the union of `blobs` on the grid `y` x `x` (½ on the boundary,
    ramping over `edge` px), or with `values` the sum of each blob's membership times its value;
    None where no blob comes near."""
    out: F32 | None = None
    for i, blob in enumerate(blobs):
        bx0, by0, bx1, by1 = blob.bbox(edge)
        if bx1 < x.min() or bx0 > x.max() or by1 < y.min() or by0 > y.max():
            continue
        depth = blob.depth(x[None, :], y[:, None])
        wgt = np.clip(depth / edge + 0.5, 0.0, 1.0).astype(np.float32)
        if values is not None:
            wgt *= np.float32(values[i])
            out = wgt if out is None else out + wgt
        else:
            out = wgt if out is None else np.maximum(out, wgt)
    return out


def _field(
    blobs: Sequence[Blob],
    xs: F64,
    ys: F64,
    edge: float,
    spacing: float,
    values: Sequence[float] | None = None,
) -> F32 | None:
    """`_blob_weight` on a coarse lattice, interpolated onto the grid `ys` x `xs`; None where it
    is zero."""
    wx, ix = _weights(xs, spacing, smooth=False)
    wy, iy = _weights(ys, spacing, smooth=False)
    lattice = _blob_weight(
        blobs, (ix * spacing).astype(np.float64), (iy * spacing).astype(np.float64), edge, values
    )
    if lattice is None or not lattice.any():
        return None
    return _matmul(_matmul(wy, lattice), np.ascontiguousarray(wx.T))


def _tones(blobs: Sequence[Blob], seed: int, salt: int) -> list[float]:
    """A value in [-1, 1] per blob, from its position: lesions differ from one another."""
    at = np.array([[round(b.cx), round(b.cy)] for b in blobs], dtype=np.int64).reshape(-1, 2)
    u = _uniform(at[:, 0], at[:, 1], _key(seed, salt))
    return [float(2.0 * v - 1.0) for v in u]


@dataclass(frozen=True, slots=True, eq=False)
class _Cells:
    """A lattice of square cells covering a sample grid, one cell of margin around it."""

    size: float
    """Cell side, level-0 px."""
    cols: NDArray[np.int64]
    """Absolute column of each lattice column. Shape: n_cols."""
    rows: NDArray[np.int64]
    """Absolute row of each lattice row. Shape: n_rows."""
    col: NDArray[np.int64]
    """Lattice column holding each sample column. Shape: nx."""
    row: NDArray[np.int64]
    """Lattice row holding each sample row. Shape: ny."""
    col_near: NDArray[np.int64]
    """The neighbouring lattice column nearer to each sample column. Shape: nx."""
    row_near: NDArray[np.int64]
    """The neighbouring lattice row nearer to each sample row. Shape: ny."""

    @classmethod
    def over(cls, size: float, xs: F64, ys: F64) -> _Cells:
        fx, fy = xs / size, ys / size
        ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        c0, r0 = int(ix[0]) - 1, int(iy[0]) - 1
        cols = np.arange(c0, int(ix[-1]) + 2, dtype=np.int64)
        rows = np.arange(r0, int(iy[-1]) + 2, dtype=np.int64)
        near_x = np.where(fx - ix >= 0.5, 1, -1)
        near_y = np.where(fy - iy >= 0.5, 1, -1)
        return cls(size, cols, rows, ix - c0, iy - r0, ix - c0 + near_x, iy - r0 + near_y)

    def uniform(self, key: int, salt: int) -> F32:
        """A uniform value per cell. Shape: n_rows x n_cols."""
        return _uniform(self.cols[None, :], self.rows[:, None], key ^ (salt * 0x9E37))

    def centres(self) -> tuple[F64, F64]:
        x = (self.cols + 0.5) * self.size
        y = (self.rows + 0.5) * self.size
        return x.astype(np.float64), y.astype(np.float64)


def _nucleus_params(
    cells: _Cells,
    key: int,
    present: NDArray[np.bool_],
    major: F32,
    minor: F32,
    angle: F32,
    solid: F32,
    rim: F32,
    step: float,
    spill: bool,
) -> F32:
    """Per-cell ellipse parameters: cx, cy, A, 2B, C (q = A·dx² + 2B·dx·dy + C·dy², 1 on the
    edge), edge sharpness k and k + ½, solid and membrane density. Shape: 9 x n_rows x n_cols.

    Without `spill` a nucleus lies wholly inside its cell (a sample looks at its own cell only);
    with it the centre is anywhere in the cell and `major` ≤ half a cell (a sample looks at the
    four cells nearest to it)."""
    cos, sin = np.cos(angle), np.sin(angle)
    ux, uy = cells.uniform(key, 1), cells.uniform(key, 2)
    x0 = cells.cols[None, :] * cells.size
    y0 = cells.rows[:, None] * cells.size
    if spill:
        cx, cy = x0 + ux * cells.size, y0 + uy * cells.size
    else:
        # the half-extents of the rotated ellipse bound the jitter
        hx = np.sqrt((major * cos) ** 2 + (minor * sin) ** 2)
        hy = np.sqrt((major * sin) ** 2 + (minor * cos) ** 2)
        cx = x0 + hx + ux * np.maximum(cells.size - 2 * hx, 0.0)
        cy = y0 + hy + uy * np.maximum(cells.size - 2 * hy, 0.0)
    # an empty cell's nucleus moves far away: zero coverage without a presence array
    cx = np.where(present, cx, cx + 1e6)
    ia, ib = 1.0 / major**2, 1.0 / minor**2
    # coverage = clip((1 - q)·k + ½): near the edge 1 - q ≈ 2·distance/minor, so the ramp is
    # one sample wide whatever the sampling step (anti-aliased)
    k = minor / (2.0 * step)
    return np.stack(
        [
            cx - cells.cols[None, :] * cells.size,  # relative to the cell: small for float32
            cy - cells.rows[:, None] * cells.size,
            cos**2 * ia + sin**2 * ib,
            2 * cos * sin * (ia - ib),
            sin**2 * ia + cos**2 * ib,
            np.broadcast_to(k, present.shape),
            np.broadcast_to(k + 0.5, present.shape),
            np.broadcast_to(solid, present.shape),
            np.broadcast_to(rim, present.shape),
        ]
    ).astype(np.float32)


def _expand(a: F32, index: NDArray[np.int64], axis: int) -> F32:
    """`np.take(a, index, axis)` for an `index` made of runs of equal values (cells along a
    row of samples): a take of one element per run, then a repeat, which copies contiguous
    runs where the take gathers element by element."""
    starts = np.flatnonzero(np.diff(index)) + 1
    bounds = np.concatenate([[0], starts, [index.size]])
    out: F32 = np.repeat(np.take(a, index[bounds[:-1]], axis=axis), np.diff(bounds), axis=axis)
    return out


def _nuclei_at(
    params: F32,
    cells: _Cells,
    row: NDArray[np.int64],
    col: NDArray[np.int64],
    xs: F64,
    ys: F64,
    vesicular: bool,
) -> tuple[F32, F32]:
    """Coverage (0..1) and haematoxylin density, at each sample, of the nuclei of the cells
    (`row`, `col`) of `_nucleus_params`. Shape: ny x nx each."""
    p = _expand(_expand(params if vesicular else params[:8], row, 1), col, 2)
    cx, cy, a, b2, c, k, k_half, solid = p[:8]
    # offsets from the cell corner, in float64 first: level-0 coordinates can be large
    dx = (xs - cells.cols[col] * cells.size).astype(np.float32)[None, :] - cx
    dy = (ys - cells.rows[row] * cells.size).astype(np.float32)[:, None] - cy
    q = a * dx
    q += b2 * dy
    q *= dx
    cdy = c * dy
    cdy *= dy
    q += cdy
    cov = k_half - k * q
    np.clip(cov, 0.0, 1.0, out=cov)
    if not vesicular:
        return cov, cov * solid
    # a vesicular nucleus has its chromatin on the membrane and a pale centre
    np.minimum(q, 1.0, out=q)
    q *= p[8]
    q += solid
    q *= cov
    return cov, q


def _nuclei_confined(params: F32, cells: _Cells, xs: F64, ys: F64) -> tuple[F32, F32]:
    return _nuclei_at(params, cells, cells.row, cells.col, xs, ys, vesicular=False)


def _nuclei_spilling(params: F32, cells: _Cells, xs: F64, ys: F64) -> tuple[F32, F32]:
    # a nucleus reaching a sample lies in the sample's cell or in one of the three cells
    # across the nearer edges; overlapping nuclei add up
    cov, dens = _nuclei_at(params, cells, cells.row, cells.col, xs, ys, vesicular=True)
    for row, col in (
        (cells.row, cells.col_near),
        (cells.row_near, cells.col),
        (cells.row_near, cells.col_near),
    ):
        c, d = _nuclei_at(params, cells, row, col, xs, ys, vesicular=True)
        np.maximum(cov, c, out=cov)
        dens += d
    return cov, dens


@dataclass(frozen=True, slots=True)
class _Gland:
    """A gland: an ellipse of epithelium around a lumen, in level-0 pixels."""

    cx: float
    """Centre x."""
    cy: float
    """Centre y."""
    a: float
    """Coefficient of dx² of the quadratic form (1 on the outer edge)."""
    b: float
    """Coefficient of dx·dy, halved."""
    c: float
    """Coefficient of dy²."""
    reach: float
    """Largest half-extent, px."""

    def q(self, x: F64, y: F64) -> F64:
        dx, dy = x - self.cx, y - self.cy
        out: F64 = self.a * dx * dx + 2 * self.b * dx * dy + self.c * dy * dy
        return out


def _glands(slide: SyntheticSlide, xs: F64, ys: F64, px: float) -> list[_Gland]:
    """Glands of the gland cells meeting the grid; none near a lesion (lesions efface them)."""
    cells = _Cells.over(_GLAND_CELL * px, xs, ys)
    key = _key(slide.seed, 40)
    u = [cells.uniform(key, s) for s in range(6)]
    out = []
    for r, c in zip(*np.nonzero(u[0] < _GLAND_PROB), strict=True):
        major = (30.0 + 26.0 * float(u[1][r, c])) * px
        minor = major * (0.55 + 0.4 * float(u[2][r, c]))
        angle = math.pi * float(u[3][r, c])
        free = cells.size - 2 * major
        gx = float(cells.cols[c]) * cells.size + major + float(u[4][r, c]) * free
        gy = float(cells.rows[r]) * cells.size + major + float(u[5][r, c]) * free
        if gx + major < xs[0] or gx - major > xs[-1] or gy + major < ys[0] or gy - major > ys[-1]:
            continue
        clear = major + _LESION_EDGE * px
        if any(float(b.depth(np.array(gx), np.array(gy))) > -clear for b in slide.lesions):
            continue
        cos, sin = math.cos(angle), math.sin(angle)
        ia, ib = 1 / major**2, 1 / minor**2
        a, b = cos * cos * ia + sin * sin * ib, cos * sin * (ia - ib)
        out.append(_Gland(gx, gy, a, b, sin * sin * ia + cos * cos * ib, major))
    return out


def _tissue_block(slide: SyntheticSlide, xs: F64, ys: F64) -> NDArray[np.bool_] | None:
    """Tissue mask of the grid `ys` x `xs`, or None when it holds no tissue."""
    inside: NDArray[np.bool_] | None = None
    corner_x = np.array([xs[0], xs[-1], xs[0], xs[-1]])
    corner_y = np.array([ys[0], ys[0], ys[-1], ys[-1]])
    for e in slide.tissue:
        if (
            e.cx + e.rx < xs[0]
            or e.cx - e.rx > xs[-1]
            or e.cy + e.ry < ys[0]
            or e.cy - e.ry > ys[-1]
        ):
            continue
        if e.contains(corner_x, corner_y).all():  # an ellipse is convex: all of the grid
            return np.ones((ys.size, xs.size), dtype=bool)
        m = e.contains(xs[None, :], ys[:, None])
        inside = m if inside is None else inside | m
    if inside is None or not inside.any():
        return None
    return inside


def _shade(slide: SyntheticSlide, xs: F64, ys: F64, step: float, probe: bool = False) -> F32:
    """RGB planes at the level-0 sample grid `ys` x `xs` (ascending, `step` px apart). Shape:
    3 x ny x nx, float32. A `probe` (for `_lesion_gain`) has every lesion and look-alike of
    average tone and its lesion colour uncorrected."""
    ny, nx = ys.size, xs.size
    grain = np.take(
        np.take(_grain(slide.seed), np.floor(ys).astype(np.int64) & 255, axis=0),
        np.floor(xs).astype(np.int64) & 255,
        axis=1,
    )
    tissue = _tissue_block(slide, xs, ys)
    if tissue is None:
        return np.stack([np.float32(v) + 1.5 * grain for v in BACKGROUND])
    px = 1.0 / slide.texture_mpp  # pixels per µm
    if slide.texture is not None:
        return _shade_textured(slide, slide.texture, xs, ys, step, tissue, grain, probe)
    seed = slide.seed

    # staining intensity (section thickness) drifts over a few hundred µm
    thick = 0.85 + 0.3 * _noise(xs, ys, 320.0 * px, _key(seed, 1))

    # collagen: sine stripes along two directions blended by a smooth field, bent by a smooth
    # displacement, broken into bundles of varying strength
    angles = _fibre_angles(seed)
    blend = np.clip(_noise(xs, ys, 260.0 * px, _key(seed, 3)) * 3.0 - 1.0, 0.0, 1.0)
    k = 2 * math.pi / (_FIBRE_WAVELENGTH * px)
    warp = (_noise(xs, ys, 45.0 * px, _key(seed, 4)) - 0.5) * np.float32(24.0 * px * k)
    stripes = np.zeros((ny, nx), dtype=np.float32)
    for t, wgt in ((angles[0], blend), (angles[1], 1.0 - blend)):
        cos, sin = math.cos(t), math.sin(t)
        # the phase at the grid's corner in float64, offsets in float32: exact at any size
        base = (k * (xs[0] * cos + ys[0] * sin)) % (2 * math.pi)
        phx = (k * cos * (xs - xs[0]) + base).astype(np.float32)
        phy = (k * sin * (ys - ys[0])).astype(np.float32)
        stripes += wgt * np.sin(phy[:, None] + phx[None, :] + warp)
    # thin fibres; faded to their mean where the sampling step cannot resolve them
    resolve = math.exp(-3.0 * (step / (_FIBRE_WAVELENGTH * px)) ** 2)
    strength = _noise(xs, ys, 28.0 * px, _key(seed, 5))
    np.maximum(stripes, 0.0, out=stripes)
    fibre = stripes * stripes * (0.3 + 1.1 * strength)
    if resolve < 0.999:
        fibre = fibre * np.float32(resolve) + np.float32(0.25 * (1 - resolve))

    # stroma: eosin with fibres, a trace of haematoxylin
    eosin = _STROMA_EOSIN + _FIBRE_EOSIN * fibre
    haem = np.full((ny, nx), _STROMA_HAEM, dtype=np.float32)
    lesion = _field(slide.lesions, xs, ys, _LESION_EDGE * px, _FIELD_SPACING * px)
    if lesion is not None:
        # fibres lost: flat, slightly mottled cytoplasm; each lesion a little pinker or paler
        flat = _LESION_EOSIN + 0.12 * _noise(xs, ys, 9.0 * px, _key(seed, 6))
        if not probe:
            tones = _tones(slide.lesions, seed, 31)
            tone = _field(slide.lesions, xs, ys, _LESION_EDGE * px, _FIELD_SPACING * px, tones)
            if tone is not None:
                flat *= 1.0 + _LESION_TONE * tone
        eosin += lesion * (flat - eosin)
        haem += lesion * np.float32(_LESION_HAEM - _STROMA_HAEM)

    glands = _glands(slide, xs, ys, px)
    for gland in glands:
        x0, x1 = np.searchsorted(xs, [gland.cx - gland.reach - step, gland.cx + gland.reach + step])
        y0, y1 = np.searchsorted(ys, [gland.cy - gland.reach - step, gland.cy + gland.reach + step])
        if x1 <= x0 or y1 <= y0:
            continue
        q = gland.q(xs[None, x0:x1], ys[y0:y1, None]).astype(np.float32)
        sharp = gland.reach / (2.0 * step)
        inside = np.clip((1.0 - q) * sharp + 0.5, 0.0, 1.0)
        lumen = np.clip((_LUMEN - q) * sharp + 0.5, 0.0, 1.0)
        rim = inside - lumen
        sub = (slice(y0, y1), slice(x0, x1))
        # epithelium: smooth pink-purple cytoplasm around a pale secretion
        eosin[sub] = eosin[sub] * (1 - inside) + 0.95 * rim + 0.4 * lumen
        haem[sub] = haem[sub] * (1 - inside) + 0.16 * rim + 0.05 * lumen

    cov, dens = _normal_nuclei(slide, xs, ys, step, px, glands)
    e_keep = 1.0 - 0.6 * cov  # a nucleus displaces most of the eosin beneath it
    if lesion is not None:
        lcov, ldens = _lesion_nuclei(slide, xs, ys, step, px, toned=not probe)
        e_keep -= _LESION_NUCLEUS_EOSIN * lcov
        cov = np.maximum(cov, lcov)
        dens += ldens

    # a darker, more purple patch (a thick or overstained area), some more than others: colour
    # only, the structure stays normal
    tones = [0.0] * len(slide.mimics) if probe else _tones(slide.mimics, seed, 33)
    intensity = [1.0 + 0.5 * t for t in tones]
    mimic = _field(slide.mimics, xs, ys, _MIMIC_EDGE * px, 4 * _FIELD_SPACING * px, intensity)
    if mimic is not None:
        haem += _MIMIC_HAEM * mimic
        eosin *= 1.0 + _MIMIC_EOSIN * mimic

    # uneven uptake of each stain on its own, over a few hundred µm: spreads the colour of
    # normal tissue so that a lesion's colour lies well inside it
    e_uptake = 0.86 + 0.28 * _noise(xs, ys, 130.0 * px, _key(seed, 8))
    h_uptake = 0.82 + 0.36 * _noise(xs, ys, 110.0 * px, _key(seed, 9))
    h_conc = (haem * (1.0 - cov) + dens) * (thick * h_uptake)
    e_conc = eosin * e_keep * (thick * e_uptake)
    # the haematoxylin's hue drifts too (bluer here, redder there: bluing, pH), so tissue
    # colour varies in every direction, not only along the two stains
    hue = _noise(xs, ys, 150.0 * px, _key(seed, 12)) - 0.5
    gain = (1.0, 1.0, 1.0)
    if lesion is not None and not probe:
        gain = _lesion_gain(slide.stain, slide.seed, slide.texture_mpp)
    out = np.empty((3, ny, nx), dtype=np.float32)
    all_tissue = bool(tissue.all())
    for ch, (oe, oh) in enumerate(zip(_od(slide.stain[0]), _od(slide.stain[1]), strict=True)):
        plane = e_conc * np.float32(-oe)
        plane -= h_conc * (np.float32(oh) * (1.0 + _HUE_DRIFT[ch] * hue))
        np.exp(plane, out=plane)
        plane *= np.float32(255.0)
        if lesion is not None and gain[ch] != 1.0:
            plane *= 1.0 + np.float32(gain[ch] - 1.0) * lesion
        plane += 3.0 * grain
        out[ch] = plane if all_tissue else np.where(tissue, plane, BACKGROUND[ch] + 1.5 * grain)
    return out


@functools.lru_cache(maxsize=64)
def _lesion_gain(
    stain: tuple[tuple[int, int, int], tuple[int, int, int]], seed: int, mpp: float
) -> tuple[float, float, float]:
    """Per-channel factors that give lesion tissue the mean RGB of normal tissue moved
    `_LESION_COLOUR` of the way towards a look-alike's, whatever the stain.

    Matching stain densities is not enough: a mean of RGB is not the RGB of a mean density
    (exp is convex), and the crowded, contrasted lesion texture is lighter on average, by a
    hue that depends on the stain: a colour rule would find it. So the mean colours of normal,
    lesion and look-alike texture are measured here, each from the same 65k points of a region
    of 1.9 x 1.9 mm (the same staining fields in all three, so they cancel)."""
    size = 10**6
    centre = size / 2.0
    # 7.3 µm apart: no multiple of any lattice of the texture
    region = (centre + (np.arange(256) + 0.5) * (7.3 / mpp)).astype(np.float64)
    whole = (Ellipse(centre, centre, centre, centre),)
    blob = Blob(centre, centre, size / 4.0)
    means = []
    for lesions, mimics in (((), ()), ((blob,), ()), ((), (blob,))):
        probe = SyntheticSlide(size, size, mpp, whole, seed, stain, lesions, mimics)
        planes = _shade(probe, region, region, 1.0, probe=True)
        means.append(planes.reshape(3, -1).mean(axis=1).astype(np.float64))
    normal, lesion, mimic = means
    target = normal + _LESION_COLOUR * (mimic - normal)
    r, g, b = (float(v) for v in target / lesion)
    return r, g, b


# The textured benchmark: a real slide's tissue (`_texture`), lesions of crowded, enlarged,
# dark nuclei over its effaced structure, in the texture's own nuclear hue; look-alikes of the
# lesions' mean colour.

_BASE_STAIN = ((226, 150, 190), (110, 60, 150))
"""The stain `random_stain` perturbs; the texture's density is scaled by the perturbation."""
_TEXTURE_EFFACE = 0.45
"""Share of the texture's density a lesion removes (its normal structure effaced)."""
_TEXTURE_DARK = 1.8
"""Factor on a lesion nucleus's haematoxylin density: hyperchromatic, darker than normal."""
_TEXTURE_NUCLEUS_KEEP = 0.6
"""Share of the texture's density a lesion nucleus displaces."""


@functools.lru_cache(maxsize=8)
def _lesion_means(mpp: float) -> tuple[float, float]:
    """Mean, over a large lesion, of the share of texture density kept and of the added
    haematoxylin density (`_shade_textured`): what a look-alike carries without the nuclei."""
    size = 10**6
    centre = size / 2.0
    region = (centre + (np.arange(256) + 0.5) * (7.3 / mpp)).astype(np.float64)
    whole = (Ellipse(centre, centre, centre, centre),)
    probe = SyntheticSlide(size, size, mpp, whole, 0, lesions=(Blob(centre, centre, size / 4.0),))
    cov, dens = _lesion_nuclei(probe, region, region, 1.0, 1.0 / mpp, toned=False)
    keep = 1.0 - _TEXTURE_EFFACE - _TEXTURE_NUCLEUS_KEEP * float(cov.mean())
    return keep, _TEXTURE_DARK * float(dens.mean())


@functools.lru_cache(maxsize=64)
def _mimic_gain(
    texture: str, stain: tuple[tuple[int, int, int], tuple[int, int, int]], mpp: float
) -> tuple[float, float, float]:
    """Per-channel factors that give a look-alike the mean RGB of a lesion on the same
    texture: matching mean densities leaves the lesion lighter (exp is convex over its
    contrasted nuclei), by a hue a colour rule would find."""
    size = 10**6
    centre = size / 2.0
    region = (centre + (np.arange(256) + 0.5) * (7.3 / mpp)).astype(np.float64)
    whole = (Ellipse(centre, centre, centre, centre),)
    blob = Blob(centre, centre, size / 4.0)
    means = []
    for lesions, mimics in (((blob,), ()), ((), (blob,))):
        probe = SyntheticSlide(size, size, mpp, whole, 0, stain, lesions, mimics, texture)
        planes = _shade(probe, region, region, 1.0, probe=True)
        means.append(planes.reshape(3, -1).mean(axis=1).astype(np.float64))
    r, g, b = (float(v) for v in means[0] / means[1])
    return r, g, b


def _shade_textured(
    slide: SyntheticSlide,
    texture: str,
    xs: F64,
    ys: F64,
    step: float,
    tissue: NDArray[np.bool_],
    grain: F32,
    probe: bool,
) -> F32:
    """`_shade` for a slide with a `texture`: the real tissue's optical density, scaled by the
    slide's stain; in a lesion its structure partly effaced under crowded, enlarged, dark
    nuclei; in a look-alike the lesions' mean density (and mean colour) with normal structure.
    Shape: 3 x ny x nx."""
    px = 1.0 / slide.texture_mpp
    source = load_texture(texture, slide.texture_mpp)
    od = sample_texture(source, xs, ys, _key(slide.seed, 40))
    gain = stain_gain(slide.stain, _BASE_STAIN)
    # lesion chromatin in the texture's own nuclear hue (at the base stain's haematoxylin
    # strength), under this slide's stain perturbation: a synthetic hue would be a colour cue
    # that no real nucleus around it shares
    strength = float(np.linalg.norm(_od(_BASE_STAIN[1])))
    haem = tuple(strength * v * g for v, g in zip(source.nuclear_hue, gain, strict=True))
    ny, nx = ys.size, xs.size
    keep: F32 | float = 1.0
    add: F32 | float = 0.0
    lesion = _field(slide.lesions, xs, ys, _LESION_EDGE * px, _FIELD_SPACING * px)
    if lesion is not None:
        lcov, ldens = _lesion_nuclei(slide, xs, ys, step, px, toned=not probe)
        keep = np.clip(
            1.0 - _TEXTURE_EFFACE * lesion - _TEXTURE_NUCLEUS_KEEP * lcov, 0.0, 1.0
        ).astype(np.float32)
        add = (_TEXTURE_DARK * ldens).astype(np.float32)
    mimic = _field(slide.mimics, xs, ys, _LESION_EDGE * px, _FIELD_SPACING * px)
    mgain = (1.0, 1.0, 1.0)
    if mimic is not None:
        m_keep, m_add = _lesion_means(slide.texture_mpp)
        keep = keep - mimic * np.float32(1.0 - m_keep)
        add = add + mimic * np.float32(m_add)
        if not probe:
            mgain = _mimic_gain(texture, slide.stain, slide.texture_mpp)
    out = np.empty((3, ny, nx), dtype=np.float32)
    all_tissue = bool(tissue.all())
    for ch in range(3):
        plane = od[..., ch] * np.float32(-gain[ch])
        plane *= keep
        plane -= add * np.float32(haem[ch])
        np.exp(plane, out=plane)
        plane *= np.float32(255.0)
        if mimic is not None and mgain[ch] != 1.0:
            plane *= 1.0 + np.float32(mgain[ch] - 1.0) * mimic
        plane += 3.0 * grain
        out[ch] = plane if all_tissue else np.where(tissue, plane, BACKGROUND[ch] + 1.5 * grain)
    return out


def _normal_nuclei(
    slide: SyntheticSlide, xs: F64, ys: F64, step: float, px: float, glands: Sequence[_Gland]
) -> tuple[F32, F32]:
    """Sparse dark nuclei: spindles along the fibres and small round lymphocyte-like ones, at a
    cellularity that drifts across the slide; a crowded ring around each gland's lumen."""
    cells = _Cells.over(_NUCLEUS_CELL * px, xs, ys)
    key = _key(slide.seed, 10)
    ccx, ccy = cells.centres()
    cellularity = _noise(ccx, ccy, 200.0 * px, _key(slide.seed, 2))
    prob = _NUCLEUS_PROB[0] + _NUCLEUS_PROB[1] * cellularity**1.5
    u = [cells.uniform(key, s) for s in range(3, 9)]
    spindle = u[1] < 0.55
    # the stripes' phase runs along (cos t, sin t): the fibres themselves run at t + 90°
    angles = _fibre_angles(slide.seed)
    blend = np.clip(_noise(ccx, ccy, 260.0 * px, _key(slide.seed, 3)) * 3.0 - 1.0, 0.0, 1.0)
    along = np.where(blend > 0.5, angles[0], angles[1]) + math.pi / 2
    angle = np.where(spindle, along + 0.35 * (u[2] - 0.5), 0.0).astype(np.float32)
    major = (np.where(spindle, 3.6 + 1.4 * u[3], 2.3 + 0.8 * u[3]) * px).astype(np.float32)
    minor = np.where(spindle, (1.3 + 0.5 * u[4]) * px, major * (0.85 + 0.15 * u[4]))
    solid = (0.9 + 0.35 * u[5]).astype(np.float32)
    if glands:
        gx, gy = np.broadcast_arrays(ccx[None, :], ccy[:, None])
        q = np.full(gx.shape, np.inf)
        for gland in glands:
            q = np.minimum(q, gland.q(gx, gy))
        ring = (q > _LUMEN + 0.05) & (q < 1.0)
        prob = np.where(ring, 0.8, np.where(q <= _LUMEN + 0.05, 0.0, prob))
        angle = np.where(ring, 0.0, angle).astype(np.float32)
    lesion = _blob_weight(slide.lesions, ccx, ccy, _LESION_EDGE * px)
    if lesion is not None:
        prob = prob * (1.0 - lesion)
    params = _nucleus_params(
        cells,
        key,
        u[0] < prob,
        major,
        minor.astype(np.float32),
        angle,
        solid,
        np.zeros_like(solid),
        step,
        spill=False,
    )
    return _nuclei_confined(params, cells, xs, ys)


def _lesion_nuclei(
    slide: SyntheticSlide, xs: F64, ys: F64, step: float, px: float, toned: bool
) -> tuple[F32, F32]:
    """Crowded, enlarged, pleomorphic, overlapping vesicular nuclei: dark membrane and pale
    centre, so that their mean density stays close to that of normal tissue."""
    cells = _Cells.over(_LESION_CELL * px, xs, ys)
    key = _key(slide.seed, 20)
    ccx, ccy = cells.centres()
    lesion = _blob_weight(slide.lesions, ccx, ccy, _LESION_EDGE * px)
    if lesion is None or not lesion.any():
        zero = np.zeros((ys.size, xs.size), dtype=np.float32)
        return zero, zero
    u = [cells.uniform(key, s) for s in range(3, 9)]
    # each lesion's nuclei a little darker or paler than another's
    tone = None
    if toned:
        tones = _tones(slide.lesions, slide.seed, 32)
        tone = _blob_weight(slide.lesions, ccx, ccy, _LESION_EDGE * px, tones)
    shade = 1.0 + 2 * _LESION_TONE * (tone if tone is not None else 0.0)
    # spilling nuclei may reach half a cell: the lattice is fine enough for crowding
    major = (cells.size / 2) * (0.62 + 0.38 * u[1] ** 1.5)
    minor = major * (0.6 + 0.4 * u[2])
    params = _nucleus_params(
        cells,
        key,
        u[0] < _LESION_PROB * lesion,
        major.astype(np.float32),
        minor.astype(np.float32),
        (math.pi * u[3]).astype(np.float32),
        ((_LESION_SOLID[0] + _LESION_SOLID[1] * u[4]) * shade).astype(np.float32),
        ((_LESION_RIM[0] + _LESION_RIM[1] * u[5]) * shade).astype(np.float32),
        step,
        spill=True,
    )
    return _nuclei_spilling(params, cells, xs, ys)


# ---------------------------------------------------------------------------------------------
# Writing slides.


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


# ---------------------------------------------------------------------------------------------
# A labelled benchmark set with ground truth.

TRUTH_FORMAT = "slidemill-synth-truth/1"
_LESION_DIAMETER_UM = (150.0, 1500.0)
_MIMIC_DIAMETER_UM = (150.0, 1000.0)
_SMALLEST_BLOB_UM = 100.0
_BLOB_MARGIN_UM = 20.0
"""Clearance between a planted region and the tissue edge or another region."""


@dataclass(frozen=True, slots=True)
class BenchmarkSlide:
    """One slide of a benchmark set and where its files are."""

    slide_id: str
    """The file's stem: what `slidemill run` calls the slide."""
    path: Path
    """The SVS file."""
    label: str
    """The slide's class: positive (it has lesions) or negative."""
    slide: SyntheticSlide
    """What was drawn: tissue, lesions, mimics, stain (for `lesion_fraction` and the like)."""
    mask_path: Path
    """Lesion mask PNG at `MASK_MPP` µm/px (255 = lesion)."""
    truth_path: Path
    """JSON sidecar: label, lesions, mimics, tissue, stain, mask resolution."""


def random_stain(
    rng: np.random.Generator,
    base: tuple[tuple[int, int, int], tuple[int, int, int]] = ((226, 150, 190), (110, 60, 150)),
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A per-slide H&E perturbation of the eosin and haematoxylin colours: each stain's optical
    density scaled by 0.8–1.2 (staining strength) and each channel by ~±7% (hue)."""
    out = []
    for colour in base:
        od = np.array(_od(colour)) * rng.uniform(0.8, 1.2) * (1.0 + rng.normal(0.0, 0.07, 3))
        rgb = np.clip(np.rint(255.0 * np.exp(-np.maximum(od, 0.0))), 1, 254).astype(int)
        out.append((int(rgb[0]), int(rgb[1]), int(rgb[2])))
    return out[0], out[1]


def _plan_tissue(rng: np.random.Generator, w: int, h: int) -> tuple[Ellipse, ...]:
    """One large piece of tissue, or two side by side."""
    if rng.uniform() < 0.6:
        return (
            Ellipse(
                float(w * rng.uniform(0.46, 0.54)),
                float(h * rng.uniform(0.46, 0.54)),
                float(w * rng.uniform(0.36, 0.45)),
                float(h * rng.uniform(0.36, 0.45)),
            ),
        )
    return tuple(
        Ellipse(
            float(w * (cx + rng.uniform(-0.02, 0.02))),
            float(h * rng.uniform(0.45, 0.55)),
            float(w * rng.uniform(0.19, 0.23)),
            float(h * rng.uniform(0.32, 0.44)),
        )
        for cx in (0.27, 0.73)
    )


def _place_blob(
    rng: np.random.Generator,
    tissue: SyntheticSlide,
    diameter: float,
    avoid: Sequence[Blob],
    margin: float,
    smallest: float,
) -> Blob | None:
    """An irregular blob about `diameter` px across, `margin` px inside the tissue and clear of
    `avoid`; shrunk until it fits, None when even `smallest` does not."""
    phi = np.linspace(0.0, 2 * math.pi, 96, endpoint=False)
    areas = np.array([e.rx * e.ry for e in tissue.tissue])
    while diameter >= smallest:
        for _ in range(40):
            amps = rng.uniform(0.0, 0.12, 4)
            amps *= min(1.0, 0.35 / amps.sum())
            harmonics = tuple(
                (float(a), float(p))
                for a, p in zip(amps, rng.uniform(0, 2 * math.pi, 4), strict=True)
            )
            e = tissue.tissue[int(rng.choice(len(areas), p=areas / areas.sum()))]
            cx = e.cx + e.rx * rng.uniform(-1, 1)
            cy = e.cy + e.ry * rng.uniform(-1, 1)
            blob = Blob(float(cx), float(cy), diameter / 2, harmonics)
            r = blob.radius_at(phi) + margin
            rim_in = tissue.tissue_at(cx + r * np.cos(phi), cy + r * np.sin(phi)).all()
            clear = all(
                math.hypot(cx - o.cx, cy - o.cy) > blob.max_radius + o.max_radius + margin
                for o in avoid
            )
            if rim_in and clear and tissue.tissue_at(np.array(cx), np.array(cy)):
                return blob
        diameter *= 0.85
    return None


def plan_benchmark_slide(
    seed: int,
    positive: bool,
    width: int = 6000,
    height: int = 4000,
    mpp: float = 0.5,
    texture: str | None = None,
) -> SyntheticSlide:
    """A random slide of the benchmark: tissue, stain, and 1–3 lesions when `positive`
    (mean diameters log-uniform in 150–1500 µm, shrunk until they fit) plus 1–3 mimics either
    way (150–1000 µm; one that finds no room is left out). Deterministic in `seed`.

    With a `texture` (a real slide's path) the tissue shows that slide's texture, and the
    planted regions are small (`_plan_textured`)."""
    if texture is not None:
        return _plan_textured(seed, positive, width, height, mpp, texture)
    rng = np.random.default_rng([seed & _MASK64, 0x5EED])
    tissue = SyntheticSlide(width, height, mpp, _plan_tissue(rng, width, height))
    margin, smallest = _BLOB_MARGIN_UM / mpp, _SMALLEST_BLOB_UM / mpp

    def diameters(n: int, lo_hi: tuple[float, float]) -> list[float]:
        lo, hi = math.log(lo_hi[0] / mpp), math.log(lo_hi[1] / mpp)
        return [math.exp(rng.uniform(lo, hi)) for _ in range(n)]

    lesions: list[Blob] = []
    for d in diameters(int(rng.integers(1, 4)) if positive else 0, _LESION_DIAMETER_UM):
        blob = _place_blob(rng, tissue, d, lesions, margin, smallest)
        if blob is not None:
            lesions.append(blob)
    if positive and not lesions:
        raise InvalidInputError(
            f"a {width}x{height} slide has no room for a lesion; make it larger"
        )
    mimics: list[Blob] = []
    for d in diameters(int(rng.integers(1, 4)), _MIMIC_DIAMETER_UM):
        blob = _place_blob(rng, tissue, d, [*lesions, *mimics], margin, smallest)
        if blob is not None:
            mimics.append(blob)
    return SyntheticSlide(
        width,
        height,
        mpp,
        tissue.tissue,
        seed=seed,
        stain=random_stain(rng),
        lesions=tuple(lesions),
        mimics=tuple(mimics),
    )


_TEXTURED_LESION_SHARE = (0.001, 0.02)
"""Range (log-uniform) of a positive textured slide's lesion area as a share of its tissue."""
_TEXTURED_SMALLEST_UM = 30.0


def _plan_textured(
    seed: int, positive: bool, width: int, height: int, mpp: float, texture: str
) -> SyntheticSlide:
    """A textured benchmark slide: when `positive`, 1–2 lesions that together cover a share of
    the tissue log-uniform in 0.1–2%; either way 1–3 look-alikes of the same sizes (hard
    negatives of the lesions' mean colour: a colour rule cannot tell them apart)."""
    rng = np.random.default_rng([seed & _MASK64, 0x7E47])
    tissue = SyntheticSlide(width, height, mpp, _plan_tissue(rng, width, height))
    tissue_area = sum(math.pi * e.rx * e.ry for e in tissue.tissue)
    margin, smallest = _BLOB_MARGIN_UM / mpp, _TEXTURED_SMALLEST_UM / mpp
    lo, hi = (math.log(v) for v in _TEXTURED_LESION_SHARE)

    def diameter(share: float) -> float:
        return 2.0 * math.sqrt(share * tissue_area / math.pi)

    lesions: list[Blob] = []
    if positive:
        n = int(rng.integers(1, 3))
        share = math.exp(rng.uniform(lo, hi)) / n
        for _ in range(n):
            blob = _place_blob(rng, tissue, diameter(share), lesions, margin, smallest)
            if blob is not None:
                lesions.append(blob)
        if not lesions:
            raise InvalidInputError(
                f"a {width}x{height} slide has no room for a lesion; make it larger"
            )
    mimics: list[Blob] = []
    for _ in range(int(rng.integers(1, 4))):
        d = diameter(math.exp(rng.uniform(lo, hi)))
        blob = _place_blob(rng, tissue, d, [*lesions, *mimics], margin, smallest)
        if blob is not None:
            mimics.append(blob)
    return SyntheticSlide(
        width,
        height,
        mpp,
        tissue.tissue,
        seed=seed,
        stain=random_stain(rng),
        lesions=tuple(lesions),
        mimics=tuple(mimics),
        texture=texture,
    )


def _blob_json(blob: Blob, mpp: float) -> dict[str, Any]:
    x0, y0, x1, y1 = blob.bbox()
    return {
        "cx": blob.cx,
        "cy": blob.cy,
        "radius": blob.radius,
        "harmonics": [list(h) for h in blob.harmonics],
        "diameter_um": 2 * blob.radius * mpp,
        "max_diameter_um": 2 * blob.max_radius * mpp,
        "area_um2": blob.area() * mpp * mpp,
        "bbox": [x0, y0, x1, y1],
    }


def truth_json(
    slide: SyntheticSlide, slide_id: str, mask_file: str, mask_mpp: float
) -> dict[str, Any]:
    """The JSON sidecar of a slide: enough to rebuild it (`load_truth`) and to score against."""
    rows, cols = slide.mask_shape(mask_mpp)
    mpp = slide.texture_mpp
    return {
        "format": TRUTH_FORMAT,
        "slide_id": slide_id,
        "label": slide.label,
        "width": slide.width,
        "height": slide.height,
        "mpp": slide.mpp,
        "seed": slide.seed,
        "stain": {"eosin": list(slide.stain[0]), "haematoxylin": list(slide.stain[1])},
        "coordinates": "level-0 pixels",
        "mask": {
            "file": mask_file,
            "mpp": mask_mpp,
            "downsample": mask_mpp / mpp,
            "width": cols,
            "height": rows,
            "rule": "pixel (i, j) is 255 when level-0 point ((j + 0.5) * downsample, "
            "(i + 0.5) * downsample) lies in a lesion",
        },
        "lesion_area_fraction_of_tissue": _lesion_share(slide),
        "lesions": [_blob_json(b, mpp) for b in slide.lesions],
        "mimics": [_blob_json(b, mpp) for b in slide.mimics],
        "tissue": [{"cx": e.cx, "cy": e.cy, "rx": e.rx, "ry": e.ry} for e in slide.tissue],
        "texture": slide.texture,
    }


def _lesion_share(slide: SyntheticSlide) -> float:
    tissue = slide.tissue_fraction()
    if tissue == 0:
        return 0.0
    return sum(b.area() for b in slide.lesions) / (tissue * slide.width * slide.height)


def truth_beside(slide_path: Path) -> SyntheticSlide | None:
    """The slide described by the `<stem>.truth.json` beside `slide_path`, or None when there is
    none; its `lesion_fraction` scores tiles of that slide."""
    sidecar = slide_path.with_name(f"{slide_path.stem}.truth.json")
    return load_truth(sidecar) if sidecar.is_file() else None


def load_truth(path: Path) -> SyntheticSlide:
    """Rebuild the `SyntheticSlide` a truth sidecar describes (pixels and lesions identical)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != TRUTH_FORMAT:
        raise InvalidInputError(f"{path}: not a {TRUTH_FORMAT} file")

    def blobs(key: str) -> tuple[Blob, ...]:
        return tuple(
            Blob(b["cx"], b["cy"], b["radius"], tuple((a, p) for a, p in b["harmonics"]))
            for b in doc[key]
        )

    e, h = doc["stain"]["eosin"], doc["stain"]["haematoxylin"]
    return SyntheticSlide(
        doc["width"],
        doc["height"],
        doc["mpp"],
        tuple(Ellipse(t["cx"], t["cy"], t["rx"], t["ry"]) for t in doc["tissue"]),
        seed=doc["seed"],
        stain=((e[0], e[1], e[2]), (h[0], h[1], h[2])),
        lesions=blobs("lesions"),
        mimics=blobs("mimics"),
        texture=doc.get("texture"),
    )


def write_truth(
    slide: SyntheticSlide, slide_path: Path, mask_mpp: float = MASK_MPP
) -> tuple[Path, Path]:
    """`<stem>.mask.png` (lesion mask at `mask_mpp` µm/px) and `<stem>.truth.json` beside
    `slide_path`."""
    stem = slide_path.stem
    mask_path = slide_path.with_name(f"{stem}.mask.png")
    truth_path = slide_path.with_name(f"{stem}.truth.json")
    mask = slide.lesion_mask(mask_mpp)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    doc = truth_json(slide, stem, mask_path.name, mask_mpp)
    truth_path.write_text(json.dumps(doc, indent=1) + "\n")
    return mask_path, truth_path


MIN_SIDE = 1024
"""The smallest side of a benchmark slide that leaves room for lesions and look-alikes."""


def write_benchmark_set(
    out: Path,
    n: int = 20,
    positive_fraction: float = 0.5,
    seed: int = 0,
    size: tuple[int, int] = (6000, 4000),
    mpp: float = 0.5,
    downsamples: Sequence[int] = (1, 4, 16),
    mask_mpp: float = MASK_MPP,
    texture: Path | None = None,
) -> list[BenchmarkSlide]:
    """`n` SVS slides (`synthetic-NNN.svs`), n · `positive_fraction` (rounded half up) of them
    positive in a seeded random order, each with its lesion mask and truth sidecar, and
    `labels.csv` (slide_id, path relative to `out`, label). Deterministic in `seed`. With a
    `texture` slide, the textured benchmark (`plan_benchmark_slide`)."""
    if n < 1:
        raise InvalidInputError("n must be at least 1")
    if not 0.0 <= positive_fraction <= 1.0:
        raise InvalidInputError("positive fraction must lie in [0, 1]")
    if min(size) < MIN_SIDE:
        raise InvalidInputError(
            f"size {size[0]}x{size[1]} is too small for lesions; use at least {MIN_SIDE}x{MIN_SIDE}"
        )
    source = None
    if texture is not None:
        source = str(Path(texture).resolve())
        load_texture(source, mpp)  # a slide without tissue fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([seed & _MASK64, 0x1AB]).permutation(n)
    positive = set(order[: math.floor(n * positive_fraction + 0.5)].tolist())
    written = []
    for i in range(n):
        slide_seed = int(
            np.random.SeedSequence([seed & _MASK64, i]).generate_state(1)[0] & 0x7FFFFFFF
        )
        slide = plan_benchmark_slide(slide_seed, i in positive, size[0], size[1], mpp, source)
        path = write_slide(out / f"synthetic-{i:03d}.svs", slide, downsamples=downsamples)
        mask_path, truth_path = write_truth(slide, path, mask_mpp)
        written.append(BenchmarkSlide(path.stem, path, slide.label, slide, mask_path, truth_path))
    with (out / "labels.csv").open("w", newline="") as f:
        table = csv.writer(f)
        table.writerow(["slide_id", "path", "label"])
        for s in written:
            table.writerow([s.slide_id, s.path.name, s.label])
    return written
