"""Shading: the RGB of any level-0 sample grid of a `SyntheticSlide`.

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

With a `texture`, a real slide's tissue takes the drawn texture's place (`_shade_textured`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.synth._cells import (
    _LESION_EDGE,
    _LESION_TONE,
    _LUMEN,
    _glands,
    _lesion_nuclei,
    _normal_nuclei,
)
from slidemill.pipeline.synth._noise import F32, F64, _fibre_angles, _grain, _key, _noise, _od
from slidemill.pipeline.synth._shapes import Blob, Ellipse, _field, _tones
from slidemill.pipeline.synth._slide import SyntheticSlide
from slidemill.pipeline.synth._texture import load_texture, sample_texture, stain_gain

BACKGROUND = (243, 241, 245)

# Texture scales (µm) and stain densities (relative to the slide's stain colours).
_LESION_EOSIN = 0.83
"""Eosin of the cytoplasm between lesion nuclei (no fibres)."""
_LESION_HAEM = 0.008
"""Background haematoxylin between lesion nuclei."""
_LESION_NUCLEUS_EOSIN = 0.6
"""Eosin a lesion nucleus displaces (normal nuclei: 0.6)."""
_LESION_COLOUR = 0.5
"""Where a lesion's mean colour lies between normal tissue's (0) and a look-alike's (1)."""
_HUE_DRIFT = (0.3, 0.0, -0.3)
"""Relative change of the haematoxylin's optical density per channel across the hue field."""
_STROMA_EOSIN = 0.6
_FIBRE_EOSIN = 0.8
_STROMA_HAEM = 0.14
_MIMIC_HAEM = 0.035
"""Haematoxylin a mimic adds: darker and bluer, like a lesion is imagined to be."""
_MIMIC_EOSIN = 0.02
_MIMIC_EDGE = 30.0
_FIBRE_WAVELENGTH = 7.0
_FIELD_SPACING = 6.0
"""Lattice on which lesion and mimic weights are sampled, then interpolated per pixel."""


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


SceneShader = Callable[[SyntheticSlide, F64, F64, float, NDArray[np.bool_] | None, F32], F32]
"""Shades a slide with a `scene` (xs, ys, step, its tissue block, grain) → RGB planes."""
SCENE_SHADERS: list[SceneShader] = []
"""The shading of slides with a `scene`: `_families` puts its own here when imported (as the
package's `__init__` does), so this module does not import the one that imports it."""


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
    if slide.scene is not None:  # a lesion family's slide
        (shade_scene,) = SCENE_SHADERS
        return shade_scene(slide, xs, ys, step, tissue, grain)
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
