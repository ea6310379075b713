"""The regions of a generated slide, in level-0 pixels: tissue `Ellipse`s and the irregular
`Blob`s planted in them (lesions and look-alikes), and the blobs' soft membership that the
shading blends them in with."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.synth._noise import F32, F64, _key, _matmul, _uniform, _weights


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


# ---------------------------------------------------------------------------------------------
# Soft membership of the planted regions, for the shading.


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
