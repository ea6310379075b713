"""The texture's cells: nuclei (normal ones, and a lesion's crowded, enlarged, pleomorphic
ones) and glands, each from a lattice of square cells whose random choices (presence,
position, size, shape, angle) are hashes of the cell."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.synth._noise import F32, F64, _fibre_angles, _key, _noise, _uniform
from slidemill.pipeline.synth._shapes import _blob_weight, _tones
from slidemill.pipeline.synth._slide import SyntheticSlide

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
_LESION_TONE = 0.1
"""Spread of the per-lesion eosin (±) and twice that of nuclear density."""
_GLAND_CELL = 190.0
"""Cell of the gland lattice: at most one gland per cell, wholly inside it."""
_GLAND_PROB = 0.45
_LUMEN = 0.3
"""q below which a gland is lumen (the inner ~55% of its radius)."""


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
