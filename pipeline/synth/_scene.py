"""What a lesion family's slide holds beyond a textured one (`_families`): which kind of lesion
each of its lesions is, the confounders of normal tissue around them, and the slide's own stain
and scanner. Value objects only; the shading and the plans are in `_families`."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.synth._shapes import Blob
from slidemill.schemas.errors import InvalidInputError
from slidemill.schemas.layout import site_name_problem

FAMILIES: Final = ("crowding", "architecture", "stroma", "necrosis")
"""The lesion families, by what sets a lesion apart from the normal tissue around it:
nuclear crowding and enlargement; the arrangement of ordinary nuclei (glands or a sheet); the
colour and texture of the stroma; necrosis or mucin."""

VARIANTS: Final = {
    "crowding": ("crowded",),
    "architecture": ("glandular", "sheet"),
    "stroma": ("myxoid", "desmoplastic"),
    "necrosis": ("necrotic", "mucinous"),
}
"""The kinds of lesion of each family; a lesion (and a look-alike) is one of them."""


@dataclass(frozen=True, slots=True)
class Band:
    """A tissue fold: a band of doubled tissue along a segment, in level-0 pixels."""

    x0: float
    """One end, x."""
    y0: float
    """One end, y."""
    x1: float
    """The other end, x."""
    y1: float
    """The other end, y."""
    half_width: float
    """Half the band's width."""

    def depth(self, x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.float64]:
        """Half-width minus the distance to the segment, px: positive inside."""
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        t = np.clip(((x - self.x0) * dx + (y - self.y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        out: NDArray[np.float64] = self.half_width - np.hypot(
            x - (self.x0 + t * dx), y - (self.y0 + t * dy)
        )
        return out

    def bbox(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 enclosing the band grown by `margin`."""
        r = self.half_width + margin
        return (
            min(self.x0, self.x1) - r,
            min(self.y0, self.y1) - r,
            max(self.x0, self.x1) + r,
            max(self.y0, self.y1) + r,
        )

    @property
    def length(self) -> float:
        return math.hypot(self.x1 - self.x0, self.y1 - self.y0)


@dataclass(frozen=True, slots=True)
class Scene:
    """A lesion family's slide: its lesions' kinds, the confounders, its stain and scanner."""

    family: str
    """One of `FAMILIES`."""
    variants: tuple[str, ...] = ()
    """The kind (`VARIANTS`) of each of the slide's lesions, in their order."""
    mimic_variants: tuple[str, ...] = ()
    """The kind of lesion each look-alike takes the mean colour of, in the mimics' order."""
    crowds: tuple[Blob, ...] = ()
    """Normal epithelium with crowded, small, dark, aligned nuclei """
    lymphoid: tuple[Blob, ...] = ()
    """Lymphocyte clusters: dense small round dark nuclei """
    folds: tuple[Band, ...] = ()
    """Tissue folds: doubled, darker tissue along a band."""
    stain_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Factors on the haematoxylin, eosin and residual concentrations of the whole slide (its
    optical density deconvolved, scaled, and mixed back): staining strength and balance."""
    white: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The scanner's white balance: a factor per RGB channel on transmitted light."""
    blur_um: float = 0.0
    """The scanner's focus: sigma of a Gaussian blur of level 0, µm (applied when written)."""
    jpeg_quality: int = 90
    """The scanner's JPEG quality (applied when written)."""
    site: str | None = None
    """The site (`SiteShift`) whose stain and scanner shifted this slide's; None = none."""


@dataclass(frozen=True, slots=True)
class SiteShift:
    """One site's staining protocol and scanner, applied on top of every slide's own (a hospital
    whose slides all come out bluer, blurrier or more compressed than another's)."""

    name: str
    """The site's name."""
    stain_scale: tuple[float, float, float]
    """Factors on the haematoxylin, eosin and residual concentrations."""
    white: tuple[float, float, float]
    """Factors on the scanner's white balance, per RGB channel."""
    blur_um: float
    """The scanner's own focus blur, µm (adds to each slide's in quadrature)."""
    jpeg_quality: int
    """The scanner's JPEG quality: no slide of the site is stored above it."""

    def describe(self) -> str:
        """One line: haematoxylin and eosin ×, white balance ×, blur, JPEG quality."""
        h, e, _ = self.stain_scale
        r, g, b = self.white
        return (
            f"haematoxylin x{h:.2f}, eosin x{e:.2f}, white balance x({r:.2f}, {g:.2f}, {b:.2f}), "
            f"blur {self.blur_um:.2f} um, JPEG quality {self.jpeg_quality}"
        )

    def apply(self, scene: Scene) -> Scene:
        """`scene` as this site's lab stains and its scanner writes it."""
        return replace(
            scene,
            stain_scale=_times(scene.stain_scale, self.stain_scale),
            white=_times(scene.white, self.white),
            blur_um=math.hypot(scene.blur_um, self.blur_um),
            jpeg_quality=min(scene.jpeg_quality, self.jpeg_quality),
            site=self.name,
        )


def site_shift(name: str) -> SiteShift:
    """The shift of the site called `name`: drawn from a hash of the name, so the same name is
    the same site on every machine. Haematoxylin and eosin each ×0.65–1.4, white balance ×0.94–1.03
    per channel, focus blur 0–1.1 µm, JPEG quality 55–92."""
    if (problem := site_name_problem(name)) is not None:
        raise InvalidInputError(problem)
    digest = hashlib.sha256(name.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    h, e = (float(math.exp(rng.uniform(math.log(0.65), math.log(1.4)))) for _ in range(2))
    white = rng.uniform(0.94, 1.03, 3)
    return SiteShift(
        name,
        (h, e, 1.0),
        (float(white[0]), float(white[1]), float(white[2])),
        float(rng.uniform(0.0, 1.1)),
        int(rng.integers(55, 93)),
    )


def _times(
    a: tuple[float, float, float], b: tuple[float, float, float]
) -> tuple[float, float, float]:
    return (a[0] * b[0], a[1] * b[1], a[2] * b[2])
