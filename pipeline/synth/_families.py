"""Lesion families: benchmark slides on a real slide's texture whose lesions differ from normal
tissue in different ways (`FAMILIES`), among confounders of normal tissue, each slide with its
own stain and scanner. For studies of what holds on lesions a method was not tuned on
(`slidemill bench-families`).

- `crowding`: crowded, enlarged, pleomorphic vesicular nuclei over effaced tissue (the
  textured benchmark's lesions, drawn by the same code).
- `architecture`: ordinary nuclei in another arrangement: back-to-back small glands, or a solid
  sheet of evenly spaced round nuclei in pale cytoplasm.
- `stroma`: the stroma between the texture's own nuclei replaced: pale, bluish, wispy (myxoid)
  or dense pink parallel bundles (desmoplastic).
- `necrosis`: pale pink amorphous debris with clumps of nuclear dust (karyorrhexis), or pale
  blue-grey mucin with wisps and a few floating cells.

Confounders on slides of either class, placed at random: normal epithelium with crowded small
dark aligned nuclei, lymphocyte clusters, tissue folds (doubled, darker tissue), and on some
slides look-alikes of a lesion's mean colour with normal structure. Between slides: the stain
(`random_stain`, then haematoxylin and eosin rescaled apart), the scanner's white balance, focus
(blur) and JPEG quality. The blur is applied to level 0 when the slide is written
(`write_scanned`), so `SyntheticSlide.render` shows the slide before the scanner.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.synth._cells import (
    _LESION_EDGE,
    _Cells,
    _expand,
    _lesion_nuclei,
    _nuclei_confined,
    _nucleus_params,
)
from slidemill.pipeline.synth._noise import F32, F64, _key, _matmul, _noise, _od, _uniform, _weights
from slidemill.pipeline.synth._plan import (
    _BLOB_MARGIN_UM,
    _TEXTURED_SMALLEST_UM,
    _place_blob,
    _plan_tissue,
    random_stain,
)
from slidemill.pipeline.synth._scene import FAMILIES, VARIANTS, Band, Scene
from slidemill.pipeline.synth._shade import (
    _BASE_STAIN,
    _FIELD_SPACING,
    _TEXTURE_DARK,
    _TEXTURE_EFFACE,
    _TEXTURE_NUCLEUS_KEEP,
    BACKGROUND,
    SCENE_SHADERS,
)
from slidemill.pipeline.synth._shapes import Blob, Ellipse, _field
from slidemill.pipeline.synth._slide import SyntheticSlide
from slidemill.pipeline.synth._texture import load_texture, sample_texture, stain_gain
from slidemill.schemas.errors import InvalidInputError

_MASK64 = 2**64 - 1

# ---------------------------------------------------------------------------------------------
# Planning

LESION_SHARE = (0.002, 0.03)
"""Range (log-uniform) of a positive slide's lesion area as a share of its tissue."""
_MIMIC_SLIDES = 0.6
"""Share of slides (either class) with look-alikes."""
_CROWD_SHARE = (0.003, 0.02)
_LYMPHOID_SHARE = (0.001, 0.008)
_FOLD_SLIDES = 0.35
"""Share of slides with a tissue fold."""


def _share_diameter(share: float, tissue_area: float) -> float:
    return 2.0 * math.sqrt(share * tissue_area / math.pi)


def _fold(rng: np.random.Generator, tissue: Sequence[Ellipse], mpp: float) -> Band:
    """A chord of one tissue ellipse (85% of it), 24–70 µm wide."""
    e = tissue[int(rng.integers(len(tissue)))]
    theta = rng.uniform(0.0, math.pi)
    dx, dy = math.cos(theta), math.sin(theta)
    off = rng.uniform(-0.5, 0.5)
    px, py = e.cx - dy * off * e.rx, e.cy + dx * off * e.ry
    # where the line p + t·d leaves the ellipse
    a = (dx / e.rx) ** 2 + (dy / e.ry) ** 2
    b = 2 * ((px - e.cx) * dx / e.rx**2 + (py - e.cy) * dy / e.ry**2)
    c = ((px - e.cx) / e.rx) ** 2 + ((py - e.cy) / e.ry) ** 2 - 1
    root = math.sqrt(max(b * b - 4 * a * c, 0.0))
    t0, t1 = (-b - root) / (2 * a), (-b + root) / (2 * a)
    mid, half = (t0 + t1) / 2, 0.85 * (t1 - t0) / 2
    return Band(
        px + (mid - half) * dx,
        py + (mid - half) * dy,
        px + (mid + half) * dx,
        py + (mid + half) * dy,
        rng.uniform(12.0, 35.0) / mpp,
    )


def plan_family_slide(
    seed: int,
    positive: bool,
    family: str,
    width: int = 4096,
    height: int = 4096,
    mpp: float = 0.5,
    texture: str | None = None,
) -> SyntheticSlide:
    """A random slide of lesion family `family` on the `texture` slide's tissue: when
    `positive`, 1–2 lesions of that family (each of one of its `VARIANTS`) that together cover a
    share of the tissue log-uniform in `LESION_SHARE`; either way confounders (see the module).
    Deterministic in `seed` and `family`."""
    if family not in FAMILIES:
        raise InvalidInputError(f"lesion family {family!r}: one of {', '.join(FAMILIES)}")
    if texture is None:
        raise InvalidInputError(f"lesion family {family}: needs a texture slide (--texture)")
    rng = np.random.default_rng([seed & _MASK64, 0xFA3, FAMILIES.index(family)])
    tissue = SyntheticSlide(width, height, mpp, _plan_tissue(rng, width, height))
    tissue_area = sum(math.pi * e.rx * e.ry for e in tissue.tissue)
    margin, smallest = _BLOB_MARGIN_UM / mpp, _TEXTURED_SMALLEST_UM / mpp
    kinds = VARIANTS[family]
    placed: list[Blob] = []

    def place(count: int, shares: tuple[float, float], split: int = 1) -> list[Blob]:
        out = []
        lo, hi = math.log(shares[0]), math.log(shares[1])
        share = math.exp(rng.uniform(lo, hi)) / split
        for _ in range(count):
            if split == 1:
                share = math.exp(rng.uniform(lo, hi))
            d = max(_share_diameter(share, tissue_area), smallest)
            blob = _place_blob(rng, tissue, d, placed, margin, smallest)
            if blob is not None:
                out.append(blob)
                placed.append(blob)
        return out

    lesions: list[Blob] = []
    if positive:
        n = int(rng.integers(1, 3))
        lesions = place(n, LESION_SHARE, split=n)
        if not lesions:
            raise InvalidInputError(
                f"a {width}x{height} slide has no room for a lesion; make it larger"
            )
    variants = tuple(kinds[int(rng.integers(len(kinds)))] for _ in lesions)
    n_mimics = int(rng.integers(1, 3)) if rng.uniform() < _MIMIC_SLIDES else 0
    mimics = place(n_mimics, LESION_SHARE)
    mimic_variants = tuple(kinds[int(rng.integers(len(kinds)))] for _ in mimics)
    crowds = place(int(rng.integers(0, 3)), _CROWD_SHARE)
    lymphoid = place(int(rng.integers(0, 4)), _LYMPHOID_SHARE)
    folds = (_fold(rng, tissue.tissue, mpp),) if rng.uniform() < _FOLD_SLIDES else ()
    stain = random_stain(rng)
    scale = (float(rng.uniform(0.75, 1.3)), float(rng.uniform(0.7, 1.35)), 1.0)
    white = np.clip(1.0 + rng.normal(0.0, 0.025, 3), 0.93, 1.05)
    blur = 0.0 if rng.uniform() < 0.3 else float(rng.uniform(0.2, 0.9))
    scene = Scene(
        family,
        variants,
        mimic_variants,
        tuple(crowds),
        tuple(lymphoid),
        folds,
        scale,
        (float(white[0]), float(white[1]), float(white[2])),
        blur,
        int(rng.integers(60, 96)),
    )
    return SyntheticSlide(
        width,
        height,
        mpp,
        tissue.tissue,
        seed=seed,
        stain=stain,
        lesions=tuple(lesions),
        mimics=tuple(mimics),
        texture=texture,
        scene=scene,
    )


# ---------------------------------------------------------------------------------------------
# Colours of the texture


@dataclass(frozen=True, slots=True, eq=False)
class _Palette:
    """Colours measured on the texture, as optical density per channel."""

    nucleus: F32
    """Mean OD of its nuclei (the 15% of tissue pixels densest in haematoxylin). Shape: 3."""
    stroma: F32
    """Mean OD of its tissue pixels below the median haematoxylin. Shape: 3."""
    tissue: F32
    """Mean OD of its tissue. Shape: 3."""
    haem: F32
    """Haematoxylin of an OD vector: its dot product with this. Shape: 3."""
    nuclear_from: float
    """Haematoxylin above which a texture pixel starts to count as nucleus (80th percentile)."""
    nuclear_to: float
    """... and counts wholly (90th percentile)."""
    eosin: F32
    """The base stain's eosin at unit density. Shape: 3."""


@functools.lru_cache(maxsize=4)
def _palette(texture: str, mpp: float) -> _Palette:
    from skimage.color import hed_from_rgb

    od = load_texture(texture, mpp).od
    step = max(1, int(math.sqrt(od.shape[0] * od.shape[1] / 1e6)))
    pixels = od[::step, ::step].reshape(-1, 3)
    pixels = pixels[pixels.sum(axis=1) > 0.18]
    haem_dir = np.asarray(hed_from_rgb, dtype=np.float32)[:, 0]
    haem = pixels @ haem_dir
    q50, q80, q85, q90 = np.quantile(haem, [0.5, 0.8, 0.85, 0.9])
    return _Palette(
        pixels[haem >= q85].mean(axis=0).astype(np.float32),
        pixels[haem < q50].mean(axis=0).astype(np.float32),
        pixels.mean(axis=0).astype(np.float32),
        haem_dir,
        float(q80),
        float(q90),
        np.asarray(_od(_BASE_STAIN[0]), dtype=np.float32),
    )


def _unit(v: F32) -> F32:
    out: F32 = (v / np.linalg.norm(v)).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Layers: each takes the texture's optical density (ny x nx x 3) and the soft membership of its
# regions (ny x nx), and returns the new optical density.

_GLAND_CELL = 60.0
"""Cell of the back-to-back gland lattice, µm: at most one small gland per cell."""
_SHEET_CELL = 12.0
"""Cell of a solid sheet's nucleus lattice, µm."""
_CROWD_CELL = 7.5
_LYMPH_CELL = 6.5
_DEBRIS_CELL = 4.5
_FLOAT_CELL = 22.0
_FOLD_DENSITY = 0.8
"""A fold is tissue on tissue: this much more optical density."""
_FOLD_EDGE = 8.0
_CONFOUNDER_EDGE = 10.0


@dataclass(frozen=True, slots=True, eq=False)
class _Grid:
    """A block of level-0 samples and what the layers share."""

    slide: SyntheticSlide
    xs: F64
    ys: F64
    step: float
    px: float
    """Pixels per µm."""
    palette: _Palette
    probe: bool
    """Rendering for a colour measurement: every region of average tone."""


def _cell_weight(blobs: Sequence[Blob], cells: _Cells, edge: float) -> F32:
    from slidemill.pipeline.synth._shapes import _blob_weight

    ccx, ccy = cells.centres()
    w = _blob_weight(blobs, ccx, ccy, edge)
    return np.zeros((cells.rows.size, cells.cols.size), np.float32) if w is None else w


def _small_nuclei(
    g: _Grid,
    blobs: Sequence[Blob],
    cell_um: float,
    salt: int,
    presence: float | F32,
    major_um: tuple[float, float],
    aspect: tuple[float, float],
    solid: tuple[float, float],
    angle: F32 | None = None,
) -> tuple[F32, F32]:
    """Nuclei confined to a lattice of `cell_um` over the regions `blobs`: coverage and density
    (in units of the texture's nuclear OD), with a chromatin texture. Shape: ny x nx each."""
    cells = _Cells.over(cell_um * g.px, g.xs, g.ys)
    key = _key(g.slide.seed, salt)
    u = [cells.uniform(key, s) for s in range(6)]
    weight = _cell_weight(blobs, cells, _CONFOUNDER_EDGE * g.px)
    major = ((major_um[0] + (major_um[1] - major_um[0]) * u[1]) * g.px).astype(np.float32)
    minor = (major * (aspect[0] + (aspect[1] - aspect[0]) * u[2])).astype(np.float32)
    if angle is None:
        angle = (math.pi * u[3]).astype(np.float32)
    params = _nucleus_params(
        cells,
        key,
        u[0] < presence * weight,
        major,
        minor,
        angle,
        (solid[0] + (solid[1] - solid[0]) * u[4]).astype(np.float32),
        np.zeros_like(major),
        g.step,
        spill=False,
    )
    cov, dens = _nuclei_confined(params, cells, g.xs, g.ys)
    return cov, dens * _chromatin(g, salt)


def _chromatin(g: _Grid, salt: int) -> F32:
    """Granular chromatin: a factor 0.7–1.3 on nuclear density, ~1.5 µm grains."""
    out: F32 = 0.7 + 0.6 * _noise(g.xs, g.ys, 1.5 * g.px, _key(g.slide.seed, 1000 + salt))
    return out


def _with_nuclei(base: F32, cov: F32, dens: F32, colour: F32) -> F32:
    """`base` OD with nuclei of coverage `cov` and density `dens` (x `colour`) over it."""
    out: F32 = base * (1.0 - cov)[..., None] + dens[..., None] * colour
    return out


def _blend(od: F32, w: F32, new: F32) -> F32:
    out: F32 = od * (1.0 - w)[..., None] + w[..., None] * new
    return out


def _crowded(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """The textured benchmark's lesions: crowded, enlarged, vesicular, dark nuclei over tissue
    partly effaced, in the texture's nuclear hue (`_shade_textured`)."""
    lcov, ldens = _lesion_nuclei(g.slide, g.xs, g.ys, g.step, g.px, toned=not g.probe)
    keep = np.clip(1.0 - _TEXTURE_EFFACE * w - _TEXTURE_NUCLEUS_KEEP * lcov, 0.0, 1.0)
    source = load_texture(g.slide.texture or "", g.slide.texture_mpp)
    gain = stain_gain(g.slide.stain, _BASE_STAIN)
    strength = float(np.linalg.norm(_od(_BASE_STAIN[1])))
    haem = np.array([strength * v * k for v, k in zip(source.nuclear_hue, gain, strict=True)])
    out: F32 = od * keep[..., None] + (_TEXTURE_DARK * ldens)[..., None] * haem.astype(np.float32)
    return out


def _glandular(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """Back-to-back small glands of varied size and shape: a pale lumen in a ring of
    pink-purple cytoplasm, ordinary columnar nuclei along its base, a little stroma (the
    texture) between glands."""
    cells = _Cells.over(_GLAND_CELL * g.px, g.xs, g.ys)
    key = _key(g.slide.seed, 60)
    u = [cells.uniform(key, s).astype(np.float64) for s in range(9)]
    size = cells.size
    a = size * (0.33 + 0.12 * u[0])
    b = a * (0.6 + 0.4 * u[1])
    theta = math.pi * u[2]
    slack = size / 2 - a
    cx = (cells.cols[None, :] + 0.5) * size + slack * (2 * u[3] - 1) * 0.9
    cy = (cells.rows[:, None] + 0.5) * size + slack * (2 * u[4] - 1) * 0.9
    # a cell without a gland: its gland moves far away
    cx = np.where(u[8] < 0.9, cx, cx + 1e7)

    def per_sample(v: NDArray[np.float64]) -> F64:
        return np.asarray(_expand(_expand(v, cells.row, 0), cells.col, 1), np.float64)  # type: ignore[arg-type]

    ga, gb, gt = per_sample(a), per_sample(b), per_sample(theta)
    dx = g.xs[None, :] - per_sample(cx)
    dy = g.ys[:, None] - per_sample(cy)
    cos, sin = np.cos(gt), np.sin(gt)
    xr, yr = (dx * cos + dy * sin) / ga, (-dx * sin + dy * cos) / gb
    r = np.hypot(xr, yr)
    dist = np.hypot(dx, dy)
    scale = dist / np.maximum(r, 1e-6)  # the gland's radius in this direction, px
    sharp = scale / g.step  # edges one sample wide
    lumen_r = 0.3 + 0.25 * per_sample(u[5])
    inside = np.clip((1.0 - r) * sharp + 0.5, 0.0, 1.0)
    lumen = np.clip((lumen_r - r) * sharp + 0.5, 0.0, 1.0)
    # columnar nuclei on the base of the epithelium, elongated along the radius, ~6.5 µm apart
    ring = lumen_r + 0.62 * (1.0 - lumen_r)
    mean_r = np.sqrt((ga**2 + gb**2) / 2)
    n_k = np.maximum(6.0, np.floor(2 * math.pi * ring * mean_r / (6.5 * g.px)))
    phi = np.arctan2(yr, xr) + 2 * math.pi * per_sample(u[6])
    sector = np.round(phi * n_k / (2 * math.pi))
    dphi = phi - sector * 2 * math.pi / n_k
    jitter = _uniform(sector.astype(np.int64), per_sample(u[7] * 2**20).astype(np.int64), key)
    tangential = dist * np.sin(dphi)
    radial = (r - ring - 0.08 * (jitter - 0.5)) * scale
    a_r = (3.0 + 1.0 * jitter) * g.px
    a_t = 0.6 * a_r
    q = (radial / a_r) ** 2 + (tangential / a_t) ** 2
    cov = np.clip((1.0 - q) * (a_t / (2.0 * g.step)) + 0.5, 0.0, 1.0)
    cov = (cov * (jitter < 0.92) * (inside - lumen)).astype(np.float32)
    p = g.palette
    epithelium = (inside - lumen)[..., None].astype(np.float32)
    mottle = (0.8 + 0.4 * _noise(g.xs, g.ys, 4.0 * g.px, _key(g.slide.seed, 64)))[..., None]
    secretion = 0.6 + 0.8 * _noise(g.xs, g.ys, 6.0 * g.px, _key(g.slide.seed, 63))
    gland = (
        epithelium * mottle * (0.42 * p.tissue + 0.06 * p.nucleus)
        + (lumen * 0.12 * secretion)[..., None].astype(np.float32) * p.stroma
    )
    dens = (0.75 + 0.25 * jitter).astype(np.float32) * cov * _chromatin(g, 60)
    gland = _with_nuclei(gland, cov, dens, p.nucleus)
    new = gland + (1.0 - inside)[..., None].astype(np.float32) * 0.85 * od
    return _blend(od, w, new)


def _sheet(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """A solid sheet: evenly spaced ordinary oval nuclei in pale cytoplasm, nothing else."""
    cov, dens = _small_nuclei(g, blobs, _SHEET_CELL, 61, 0.92, (3.6, 4.4), (0.7, 0.95), (0.7, 0.95))
    p = g.palette
    mottle = _noise(g.xs, g.ys, 9.0 * g.px, _key(g.slide.seed, 62))
    cyto = (0.8 + 0.4 * mottle)[..., None] * (0.36 * p.tissue)
    return _blend(od, w, _with_nuclei(cyto.astype(np.float32), cov, dens, p.nucleus))


def _fibres(g: _Grid, wavelength_um: float, salt: int, warp: float, power: float) -> F32:
    """Fibres: a sine along a direction that drifts over the slide, its phase bent by a smooth
    field (`warp` wavelengths), raised to `power` and broken into bundles of varying strength.
    Shape: ny x nx, in [0, 1.4]."""
    seed = g.slide.seed
    angle = math.pi * float(_uniform(np.array([salt]), np.array([7]), _key(seed, salt))[0])
    k = 2 * math.pi / (wavelength_um * g.px)
    cos, sin = math.cos(angle), math.sin(angle)
    base = (k * (g.xs[0] * cos + g.ys[0] * sin)) % (2 * math.pi)
    phx = (k * cos * (g.xs - g.xs[0]) + base).astype(np.float32)
    phy = (k * sin * (g.ys - g.ys[0])).astype(np.float32)
    bend = (_noise(g.xs, g.ys, 40.0 * g.px, _key(seed, salt + 1)) - 0.5) * np.float32(
        2 * math.pi * warp
    )
    stripes = np.maximum(np.sin(phy[:, None] + phx[None, :] + bend), 0.0) ** power
    strength = _noise(g.xs, g.ys, 3 * wavelength_um * g.px, _key(seed, salt + 2))
    out: F32 = stripes * (0.2 + 1.2 * strength)
    return out


def _restroma(g: _Grid, od: F32, w: F32, new: Callable[[F32], F32]) -> F32:
    """`od` with what is not nucleus changed to `new(od)` where `w`: the texture's own nuclei
    stay as they are."""
    p = g.palette
    haem = od @ p.haem
    nuclear = np.clip((haem - p.nuclear_from) / (p.nuclear_to - p.nuclear_from), 0.0, 1.0)
    replace = (w * (1.0 - nuclear))[..., None]
    out: F32 = od * (1.0 - replace) + replace * new(od)
    return out


def _recolour(od: F32, towards: F32, share: float) -> F32:
    """Each pixel's OD turned `share` of the way towards the direction `towards`, its density
    kept."""
    norm = np.linalg.norm(od, axis=-1, keepdims=True)
    mixed = (1.0 - share) * od / np.maximum(norm, 1e-6) + share * _unit(towards)
    out: F32 = mixed / np.maximum(np.linalg.norm(mixed, axis=-1, keepdims=True), 1e-6) * norm
    return out


def _myxoid(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """Myxoid stroma: paler, bluish grey, loose, with wisps of fine fibres."""
    p = g.palette
    blue = (0.5 * _unit(p.stroma) + 0.5 * _unit(p.nucleus)).astype(np.float32)
    wisps = _fibres(g, 4.0, 70, 3.0, 2.0)

    def new(base: F32) -> F32:
        loose = _recolour(base, blue, 0.5) * 0.35
        out: F32 = loose + (0.12 + 0.3 * wisps)[..., None] * (np.linalg.norm(p.stroma) * blue)
        return out

    return _restroma(g, od, w, new)


def _desmoplastic(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """Desmoplastic stroma: denser and pinker, in thick parallel bundles of collagen."""
    p = g.palette
    bundles = _fibres(g, 10.0, 74, 0.8, 1.5)

    def new(base: F32) -> F32:
        dense = _recolour(base, p.eosin, 0.35) * 0.7
        out: F32 = dense + (0.25 + 0.55 * bundles)[..., None] * (1.1 * p.stroma)
        return out

    return _restroma(g, od, w, new)


def _necrotic(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """Necrosis: pale pink amorphous debris over ghosts of the tissue, with clumps of nuclear
    dust (karyorrhexis)."""
    p = g.palette
    cells = _Cells.over(_DEBRIS_CELL * g.px, g.xs, g.ys)
    ccx, ccy = cells.centres()
    clumps = _noise(ccx, ccy, 22.0 * g.px, _key(g.slide.seed, 80))
    presence = 0.7 * np.clip(clumps * 1.8 - 0.4, 0.0, 1.0)
    cov, dens = _small_nuclei(
        g, blobs, _DEBRIS_CELL, 81, presence, (0.4, 1.6), (0.5, 1.0), (0.9, 1.4)
    )
    mottle = _noise(g.xs, g.ys, 14.0 * g.px, _key(g.slide.seed, 82))
    pink = (0.7 + 0.6 * mottle)[..., None] * (0.8 * p.eosin + 0.2 * p.stroma)
    base = 0.18 * od + pink.astype(np.float32)
    return _blend(od, w, _with_nuclei(base.astype(np.float32), cov, dens, p.nucleus))


def _mucinous(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """Mucin: a pale blue-grey pool with wisps, and a few floating cells."""
    p = g.palette
    colour = _unit(0.65 * _unit(p.nucleus) + 0.35 * _unit(p.stroma)) * (
        0.3 * np.linalg.norm(p.stroma)
    )
    wisps = _fibres(g, 6.0, 90, 4.0, 3.0)
    density = 0.5 + 1.2 * wisps
    cov, dens = _small_nuclei(g, blobs, _FLOAT_CELL, 92, 0.15, (3.4, 4.4), (0.7, 1.0), (0.5, 0.7))
    base = 0.1 * od + density[..., None] * colour.astype(np.float32)
    return _blend(od, w, _with_nuclei(base.astype(np.float32), cov, dens, p.nucleus))


_LESIONS: dict[str, Callable[[_Grid, Sequence[Blob], F32, F32], F32]] = {
    "crowded": _crowded,
    "glandular": _glandular,
    "sheet": _sheet,
    "myxoid": _myxoid,
    "desmoplastic": _desmoplastic,
    "necrotic": _necrotic,
    "mucinous": _mucinous,
}


def _crowds(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """Normal epithelium with crowded nuclei: small, dark, oval, aligned with their
    neighbours (streaming), over the texture partly replaced by cytoplasm."""
    cells = _Cells.over(_CROWD_CELL * g.px, g.xs, g.ys)
    ccx, ccy = cells.centres()
    angle = (
        math.pi * _noise(ccx, ccy, 90.0 * g.px, _key(g.slide.seed, 100))
        + 0.5 * (cells.uniform(_key(g.slide.seed, 101), 0) - 0.5)
    ).astype(np.float32)
    cov, dens = _small_nuclei(
        g, blobs, _CROWD_CELL, 102, 0.8, (2.8, 3.6), (0.45, 0.6), (0.95, 1.2), angle
    )
    p = g.palette
    base = 0.55 * od + 0.3 * p.tissue
    new = _with_nuclei(base.astype(np.float32), cov, dens, p.nucleus)
    out: F32 = od * (1.0 - w)[..., None] + w[..., None] * new
    return out


def _lymphocytes(g: _Grid, blobs: Sequence[Blob], od: F32, w: F32) -> F32:
    """A lymphocyte cluster: dense small round very dark nuclei, little cytoplasm."""
    cov, dens = _small_nuclei(
        g, blobs, _LYMPH_CELL, 110, 0.85, (2.3, 2.9), (0.88, 1.0), (1.15, 1.45)
    )
    new = _with_nuclei((0.45 * od).astype(np.float32), cov, dens, g.palette.nucleus)
    out: F32 = od * (1.0 - w)[..., None] + w[..., None] * new
    return out


def _band_field(bands: Sequence[Band], xs: F64, ys: F64, edge: float, spacing: float) -> F32 | None:
    """Soft membership (½ on the edge) of the union of `bands`, on a coarse lattice
    interpolated onto the grid `ys` x `xs`; None where it is zero."""
    wx, ix = _weights(xs, spacing, smooth=False)
    wy, iy = _weights(ys, spacing, smooth=False)
    lx, ly = (ix * spacing).astype(np.float64), (iy * spacing).astype(np.float64)
    lattice: F32 | None = None
    for band in bands:
        x0, y0, x1, y1 = band.bbox(edge)
        if x1 < lx[0] or x0 > lx[-1] or y1 < ly[0] or y0 > ly[-1]:
            continue
        wgt = np.clip(band.depth(lx[None, :], ly[:, None]) / edge + 0.5, 0, 1).astype(np.float32)
        lattice = wgt if lattice is None else np.maximum(lattice, wgt)
    if lattice is None or not lattice.any():
        return None
    return _matmul(_matmul(wy, lattice), np.ascontiguousarray(wx.T))


@functools.lru_cache(maxsize=64)
def _mimic_od_gain(family: str, variant: str, texture: str, mpp: float) -> tuple[float, ...]:
    """Per-channel factor on the texture's optical density that gives it the mean density of a
    large lesion of `variant` (over the same texture)."""
    lesion, normal = (
        _probe_means(family, variant, texture, mpp, kind) for kind in ("lesion", "normal")
    )
    od_lesion, od_normal = lesion[1], normal[1]
    return tuple(float(v) for v in od_lesion / od_normal)


@functools.lru_cache(maxsize=64)
def _mimic_rgb_gain(family: str, variant: str, texture: str, mpp: float) -> tuple[float, ...]:
    """Per-channel factor that gives a look-alike the mean RGB of the lesion: a mean density
    is not a mean colour (exp is convex)."""
    lesion = _probe_means(family, variant, texture, mpp, "lesion")[0]
    mimic = _probe_means(family, variant, texture, mpp, "mimic")[0]
    return tuple(float(v) for v in lesion / mimic)


def _probe_means(
    family: str, variant: str, texture: str, mpp: float, kind: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean RGB and mean optical density of 65k points of a 1.9 x 1.9 mm region that is all
    lesion, all look-alike or all normal (the same texture in all three)."""
    size = 10**6
    centre = size / 2.0
    region = (centre + (np.arange(256) + 0.5) * (7.3 / mpp)).astype(np.float64)
    whole = (Ellipse(centre, centre, centre, centre),)
    blob = (Blob(centre, centre, size / 4.0),)
    scene = Scene(
        family,
        variants=(variant,) if kind == "lesion" else (),
        mimic_variants=(variant,) if kind == "mimic" else (),
    )
    probe = SyntheticSlide(
        size,
        size,
        mpp,
        whole,
        0,
        lesions=blob if kind == "lesion" else (),
        mimics=blob if kind == "mimic" else (),
        texture=texture,
        scene=scene,
    )
    grid = np.ones((region.size, region.size), dtype=bool)
    planes = _shade_family(probe, region, region, 1.0, grid, np.zeros_like(grid, np.float32), True)
    rgb = planes.reshape(3, -1).astype(np.float64)
    od = -np.log(np.clip(rgb, 1.0, 255.0) / 255.0)
    return rgb.mean(axis=1), od.mean(axis=1)


@functools.lru_cache(maxsize=16)
def _stain_matrix(scale: tuple[float, float, float]) -> F32:
    """OD (row vector) → OD with the haematoxylin, eosin and residual concentrations scaled."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    m = np.asarray(hed_from_rgb) @ np.diag(scale) @ np.asarray(rgb_from_hed)
    out: F32 = m.astype(np.float32)
    return out


def _shade_family(
    slide: SyntheticSlide,
    xs: F64,
    ys: F64,
    step: float,
    tissue: NDArray[np.bool_] | None,
    grain: F32,
    probe: bool = False,
) -> F32:
    """`_shade` for a lesion family's slide: RGB planes at the level-0 grid `ys` x `xs`, whose
    `tissue` mask is None when it holds none. Shape: 3 x ny x nx. A `probe` (for the
    look-alikes' colour) has no grain, every region of average tone, and its look-alikes
    without their RGB correction."""
    scene = slide.scene
    if scene is None or slide.texture is None:
        raise ValueError("a lesion family's slide has a scene and a texture")
    if tissue is None:  # glass, seen by this slide's scanner
        return np.stack(
            [np.float32(v * w) + 1.5 * grain for v, w in zip(BACKGROUND, scene.white, strict=True)]
        )
    mpp = slide.texture_mpp
    g = _Grid(slide, xs, ys, step, 1.0 / mpp, _palette(slide.texture, mpp), probe)
    px = g.px
    source = load_texture(slide.texture, mpp)
    gain = np.asarray(stain_gain(slide.stain, _BASE_STAIN), dtype=np.float32)
    od = sample_texture(source, xs, ys, _key(slide.seed, 40)) * gain
    fold = _band_field(scene.folds, xs, ys, _FOLD_EDGE * px, _FIELD_SPACING * px)
    if fold is not None:
        od *= (1.0 + _FOLD_DENSITY * fold)[..., None]
    layers: list[tuple[Callable[[_Grid, Sequence[Blob], F32, F32], F32], list[Blob], float]] = [
        (_crowds, list(scene.crowds), _CONFOUNDER_EDGE),
        (_lymphocytes, list(scene.lymphoid), _CONFOUNDER_EDGE),
    ]
    for variant in VARIANTS[scene.family]:
        blobs = [b for b, v in zip(slide.lesions, scene.variants, strict=True) if v == variant]
        layers.append((_LESIONS[variant], blobs, _LESION_EDGE))
    for layer, blobs, edge in layers:
        if not blobs:
            continue
        w = _field(blobs, xs, ys, edge * px, _FIELD_SPACING * px)
        if w is not None:
            od = layer(g, blobs, od, w)
    rgb_gain: F32 | None = None
    for variant in VARIANTS[scene.family]:
        blobs = [b for b, v in zip(slide.mimics, scene.mimic_variants, strict=True) if v == variant]
        w = _field(blobs, xs, ys, _LESION_EDGE * px, _FIELD_SPACING * px) if blobs else None
        if w is None:
            continue
        od_gain = np.asarray(_mimic_od_gain(scene.family, variant, slide.texture, mpp), np.float32)
        od = od * (1.0 + w[..., None] * (od_gain - 1.0))
        if not probe:
            f = np.asarray(_mimic_rgb_gain(scene.family, variant, slide.texture, mpp), np.float32)
            term = w[..., None] * (f - 1.0)
            rgb_gain = term if rgb_gain is None else rgb_gain + term
    if scene.stain_scale != (1.0, 1.0, 1.0):
        od = od @ _stain_matrix(scene.stain_scale)
    out = np.empty((3, ys.size, xs.size), dtype=np.float32)
    all_tissue = bool(tissue.all())
    for ch in range(3):
        plane = np.exp(-od[..., ch])
        plane *= np.float32(255.0 * scene.white[ch])
        if rgb_gain is not None:
            plane *= 1.0 + rgb_gain[..., ch]
        if probe:
            out[ch] = plane
            continue
        plane += 3.0 * grain
        back = np.float32(BACKGROUND[ch] * scene.white[ch]) + 1.5 * grain
        out[ch] = plane if all_tissue else np.where(tissue, plane, back)
    return out


SCENE_SHADERS.append(_shade_family)  # `_shade` calls it for a slide with a scene


# ---------------------------------------------------------------------------------------------
# Writing: the scanner

_STRIP = 512
"""Rows of level 0 rendered, blurred and stored at a time."""


def write_scanned(
    path: Path, slide: SyntheticSlide, downsamples: Sequence[int] = (1, 4, 16)
) -> Path:
    """Write a lesion family's slide as its scanner would: level 0 rendered, blurred by its
    focus, and written as an SVS pyramid (box averages) at its JPEG quality."""
    from scipy.ndimage import gaussian_filter

    from slidemill.pipeline.synth._degrade import write_array_slide

    scene = slide.scene
    if scene is None:
        raise InvalidInputError("write_scanned writes lesion families' slides")
    w, h = slide.width, slide.height
    sigma = scene.blur_um / slide.texture_mpp
    margin = math.ceil(4 * sigma)
    level0 = np.empty((h, w, 3), dtype=np.uint8)
    for y0 in range(0, h, _STRIP):
        rows = min(_STRIP, h - y0)
        if sigma <= 0:
            level0[y0 : y0 + rows] = slide.render(0, y0, w, rows, 1.0)
            continue
        strip = slide.render_float(0, y0 - margin, w, rows + 2 * margin, 1.0)
        for c in range(3):
            blurred = gaussian_filter(strip[..., c], sigma, mode="nearest")
            level0[y0 : y0 + rows, :, c] = np.clip(
                blurred[margin : margin + rows] + 0.5, 0.0, 255.0
            ).astype(np.uint8)
    return write_array_slide(
        path, level0, slide.texture_mpp, downsamples=downsamples, quality=scene.jpeg_quality
    )
