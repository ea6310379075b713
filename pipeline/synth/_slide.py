"""Generated pyramidal slides with a known tissue layout and known lesions, for tests, demos and
benchmarks.

Pixels are a pure function of level-0 coordinates, so every pyramid level shows the same tissue
and a test knows exactly where tissue and lesions are. Nothing is stored: every random choice of
the texture (a nucleus, a gland, a fibre bundle) is a hash of a coarse cell of level-0
coordinates, so any region renders alone, identically, at any downsample.

`SyntheticSlide.lesion_fraction` gives the true lesion share of any level-0 box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.synth._noise import F32, _box
from slidemill.pipeline.synth._scene import Scene
from slidemill.pipeline.synth._shapes import Blob, Ellipse

MASK_MPP = 8.0
"""Resolution of the ground-truth lesion masks written beside benchmark slides, µm/px."""

# µm/px assumed for the texture scale of a slide that records no resolution.
_DEFAULT_MPP = 0.5
# Samples per side of one shading block: keeps every temporary array in the CPU cache.
_BLOCK = 256


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
    scene: Scene | None = None
    """A lesion family's slide (`_families`, with a `texture`): its lesions' kinds, confounders,
    stain and scanner; None for the drawn and the textured benchmark."""

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
    # imported here: the shading builds probe slides of its own (`_lesion_gain`), so `_shade`
    # imports this module
    from slidemill.pipeline.synth._shade import _shade

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
