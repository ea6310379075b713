"""Lesion families (`synth --generator <family>`): each family's lesions are where the truth
says and differ from the same tissue without them in that family's own way; look-alikes take
a lesion's mean colour; plans, sets and the command; the drawn and textured generators stay
deterministic and differ from every family."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
import pytest
from numpy.typing import NDArray
from PIL import Image
from skimage.color import rgb2hed
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.synth import (
    FAMILIES,
    LESION_SHARE,
    VARIANTS,
    Blob,
    Ellipse,
    Scene,
    SyntheticSlide,
    load_truth,
    plan_benchmark_slide,
    plan_family_slide,
    write_benchmark_set,
)

SIDE, DS = 1000, 2.0
"""Level-0 side of the test slides, and the downsample they are rendered at (500 x 500 px)."""
LESION = Blob(500.0, 500.0, 300.0)
Image_ = NDArray[np.float64]


def _slide(texture: Path, variant: str | None, where: str = "lesion") -> SyntheticSlide:
    """A slide all tissue with one large lesion (or look-alike) of `variant` in the middle, or
    none: the same tissue (seed) in every case."""
    family = next(f for f, kinds in VARIANTS.items() if variant is None or variant in kinds)
    lesion = where == "lesion" and variant is not None
    mimic = where == "mimic" and variant is not None
    scene = Scene(
        family,
        variants=(variant,) if lesion and variant else (),
        mimic_variants=(variant,) if mimic and variant else (),
    )
    return SyntheticSlide(
        SIDE, SIDE, 0.5, (Ellipse(500, 500, 800, 800),), seed=7,
        lesions=(LESION,) if lesion else (), mimics=(LESION,) if mimic else (),
        texture=str(texture), scene=scene,
    )  # fmt: skip


def _render(slide: SyntheticSlide) -> Image_:
    n = int(SIDE / DS)
    return slide.render(0, 0, n, n, DS, samples=1).astype(np.float64)


def _grey(img: Image_) -> Image_:
    out: Image_ = img.mean(axis=-1)
    return out


def _dark(img: Image_, ref: Image_) -> float:
    """Share of pixels darker than the reference's 20th percentile (nuclei)."""
    return float((_grey(img) < np.quantile(_grey(ref), 0.2)).mean())


def _eosin(img: Image_, ref: Image_) -> float:
    return float(rgb2hed(img.astype(np.uint8))[..., 1].mean())


def _blue_red(img: Image_, ref: Image_) -> float:
    """Blue over red optical density: the stroma's hue."""
    od = -np.log(np.clip(img, 1.0, 255.0) / 255.0)
    return float(od[..., 2].mean() / od[..., 0].mean())


def _spread(img: Image_, ref: Image_) -> float:
    return float(_grey(img).std())


# family -> (statistic, lesion value / value of the same tissue without the lesion must be
# above (>1) or below (<1) this)
STATISTICS: dict[str, tuple[Callable[[Image_, Image_], float], float]] = {
    "crowding": (_dark, 1.4),  # crowded dark nuclei
    "architecture": (_eosin, 0.8),  # cytoplasm and lumens instead of eosin-rich stroma
    "stroma": (_blue_red, 0.0),  # the stroma's hue moves, either way (checked below)
    "necrosis": (_spread, 0.65),  # pale amorphous debris or mucin: little contrast left
}


@pytest.mark.parametrize("variant", [v for kinds in VARIANTS.values() for v in kinds])
def test_each_family_s_lesions_are_where_the_mask_says(sample_slide: Path, variant: str) -> None:
    """Beyond the lesion's soft rim the slide is the lesion-free slide pixel for pixel; well
    inside the mask, the family's own statistic differs from the same tissue without it."""
    family = next(f for f, kinds in VARIANTS.items() if variant in kinds)
    with_lesion = _slide(sample_slide, variant)
    img, ref = _render(with_lesion), _render(_slide(sample_slide, None))
    centres = (np.arange(int(SIDE / DS)) + 0.5) * DS
    depth = LESION.depth(centres[None, :], centres[:, None])
    mask = with_lesion.lesion_at(centres[None, :], centres[:, None])
    assert np.array_equal(mask, depth >= 0)
    # the soft rim reaches 12 µm out, nuclei there a few µm further
    outside, inside = depth < -50, depth > 30
    assert np.array_equal(img[outside], ref[outside])
    assert not np.allclose(img[inside], ref[inside], atol=3)
    statistic, bound = STATISTICS[family]
    lesion, normal = img[inside][None], ref[inside][None]
    a, b = statistic(lesion, normal), statistic(normal, normal)
    print(f"{family}/{variant}: {statistic.__name__} {a:.4f} in the lesion, {b:.4f} without")
    if family == "stroma":
        assert abs(np.log(a / b)) > 0.1
    elif bound > 1:
        assert a > bound * b
    else:
        assert a < bound * b


@pytest.mark.parametrize("variant", ["crowded", "myxoid", "necrotic"])
def test_look_alikes_take_a_lesion_s_mean_colour(sample_slide: Path, variant: str) -> None:
    """Over many texture patches (36 windows of 48 x 48 level-0 px across a region 2.5 mm wide),
    a look-alike has the mean RGB of a lesion over the same tissue within a few grey levels,
    and both are far from the tissue without either."""
    family = next(f for f, kinds in VARIANTS.items() if variant in kinds)
    big = Blob(3000.0, 3000.0, 2900.0)
    corners = 600.0 + 800.0 * np.arange(6)

    def mean(lesions: tuple[Blob, ...], mimics: tuple[Blob, ...]) -> NDArray[np.float64]:
        scene = Scene(family, (variant,) * len(lesions), (variant,) * len(mimics))
        slide = SyntheticSlide(
            6000, 6000, 0.5, (Ellipse(3000, 3000, 4500, 4500),), seed=7,
            lesions=lesions, mimics=mimics, texture=str(sample_slide), scene=scene,
        )  # fmt: skip
        windows = [slide.render(x, y, 48, 48, 1.0) for x in corners for y in corners]
        out: NDArray[np.float64] = np.concatenate(windows).reshape(-1, 3).mean(0)
        return out

    lesion, mimic, normal = mean((big,), ()), mean((), (big,)), mean((), ())
    print(f"{variant}: lesion {lesion.round(1)} look-alike {mimic.round(1)} {normal.round(1)}")
    assert np.abs(lesion - mimic).max() < 6.0
    assert np.abs(normal - mimic).max() > 8.0


def test_family_plans_are_seeded_lesions_small_confounders_apart(sample_slide: Path) -> None:
    texture = str(sample_slide)
    folds, mimic_slides = 0, 0
    for family in FAMILIES:
        for seed in range(12):
            slide = plan_family_slide(seed, seed % 2 == 0, family, texture=texture)
            assert slide == plan_family_slide(seed, seed % 2 == 0, family, texture=texture)
            scene = slide.scene
            assert scene is not None and scene.family == family
            assert (slide.label == "positive") == (seed % 2 == 0)
            assert len(scene.variants) == len(slide.lesions)
            assert len(scene.mimic_variants) == len(slide.mimics)
            assert set(scene.variants) | set(scene.mimic_variants) <= set(VARIANTS[family])
            if slide.lesions:
                tissue = sum(np.pi * e.rx * e.ry for e in slide.tissue)
                share = sum(b.area() for b in slide.lesions) / tissue
                assert 0.7 * LESION_SHARE[0] < share < 1.1 * LESION_SHARE[1], share
            regions = [*slide.lesions, *slide.mimics, *scene.crowds, *scene.lymphoid]
            phi = np.linspace(0, 2 * np.pi, 64)
            for i, a in enumerate(regions):
                r = a.radius_at(phi)
                assert slide.tissue_at(a.cx + r * np.cos(phi), a.cy + r * np.sin(phi)).all()
                for b in regions[i + 1 :]:
                    assert np.hypot(a.cx - b.cx, a.cy - b.cy) > a.max_radius + b.max_radius
            assert 0.7 <= scene.stain_scale[0] <= 1.35 and 60 <= scene.jpeg_quality <= 95
            folds += bool(scene.folds)
            mimic_slides += bool(slide.mimics)
    assert 0 < folds < 48 and 0 < mimic_slides < 48
    # the same seed gives each family its own slide
    plans = [plan_family_slide(3, True, f, texture=texture) for f in FAMILIES]
    assert len({(p.tissue, p.lesions) for p in plans}) == len(FAMILIES)


def test_a_family_set_has_its_names_masks_and_truth(sample_slide: Path, tmp_path: Path) -> None:
    written = write_benchmark_set(
        tmp_path, n=2, size=(1024, 1024), texture=sample_slide, generator="necrosis"
    )
    assert [s.path.name for s in written] == ["necrosis-000.svs", "necrosis-001.svs"]
    assert (tmp_path / "labels.csv").read_text().splitlines()[1].startswith("necrosis-000,")
    for s in written:
        assert load_truth(s.truth_path) == s.slide
        doc = json.loads(s.truth_path.read_text())
        assert doc["scene"]["family"] == "necrosis"
        assert doc["scene"]["jpeg_quality"] == s.slide.scene.jpeg_quality  # type: ignore[union-attr]
        mask = np.asarray(Image.open(s.mask_path)) > 0
        assert np.array_equal(mask, s.slide.lesion_mask())
        with openslide.OpenSlide(str(s.path)) as slide:
            assert slide.dimensions == (1024, 1024)
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    with pytest.raises(Exception, match="texture"):
        write_benchmark_set(tmp_path / "x", n=1, size=(1024, 1024), generator="stroma")
    with pytest.raises(Exception, match="one of"):
        write_benchmark_set(tmp_path / "y", n=1, texture=sample_slide, generator="painted")


def test_drawn_and_textured_stay_deterministic_and_differ_from_every_family(
    sample_slide: Path,
) -> None:
    """The drawn and textured generators render the same pixels twice and carry no scene (their
    truth has no family key); every family's slide of the same seed differs from them and from
    each other."""
    texture = str(sample_slide)
    drawn = plan_benchmark_slide(4, True, 4096, 4096)
    textured = plan_benchmark_slide(4, True, 4096, 4096, texture=texture)
    assert drawn.scene is None and textured.scene is None
    renders = {}
    for name, slide in (("drawn", drawn), ("textured", textured)):
        first = slide.render(1536, 1536, 256, 256, 2.0)
        assert np.array_equal(first, slide.render(1536, 1536, 256, 256, 2.0))
        renders[name] = first
    for family in FAMILIES:
        slide = plan_family_slide(4, True, family, 4096, 4096, texture=texture)
        renders[family] = slide.render(1536, 1536, 256, 256, 2.0)
    names = list(renders)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(renders[a], renders[b]), (a, b)


def test_the_synth_command_makes_a_family_set(sample_slide: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["synth", "--out", str(tmp_path), "--n", "1", "--size", "1024x1024"]
    res = runner.invoke(app, [*base, "--generator", "stroma", "--texture", str(sample_slide)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "stroma-000.svs").is_file()
    for bad in (["--generator", "painted"], ["--generator", "drawn", "--texture", "x.svs"]):
        res = runner.invoke(app, [*base, *bad])
        assert res.exit_code == 2 and "--generator" in res.output, res.output
