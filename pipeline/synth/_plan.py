"""Planning a benchmark slide: its tissue, stain, lesions and look-alikes, at random but
deterministic in a seed (`plan_benchmark_slide`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from slidemill.pipeline.synth._noise import _MASK64, _od
from slidemill.pipeline.synth._shapes import Blob, Ellipse
from slidemill.pipeline.synth._slide import SyntheticSlide
from slidemill.schemas.errors import InvalidInputError

_LESION_DIAMETER_UM = (150.0, 1500.0)
_MIMIC_DIAMETER_UM = (150.0, 1000.0)
_SMALLEST_BLOB_UM = 100.0
_BLOB_MARGIN_UM = 20.0
"""Clearance between a planted region and the tissue edge or another region."""


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
