"""Hashing and noise: every random choice of the drawn texture is a function of integer
lattice coordinates of level 0 (and the slide's seed), so any region renders alone,
identically, at any downsample. With the small array helpers the shading shares: optical
density of a stain colour, and block means."""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

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
