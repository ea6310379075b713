"""The textured benchmark (`synth --texture`): a real slide's tissue, small lesions of crowded
dark nuclei, look-alikes of the lesions' mean colour, with ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.synth import (
    Blob,
    Ellipse,
    SyntheticSlide,
    load_texture,
    load_truth,
    plan_benchmark_slide,
    write_slide,
)
from slidemill.schemas.errors import InvalidInputError


def test_textured_plans_have_small_lesions_and_look_alikes(sample_slide: Path) -> None:
    """Lesions cover 0.1–2% of the tissue (down to the smallest), look-alikes on every slide;
    the drawn benchmark's plans are untouched by the option."""
    shares, smallest = [], 1.0
    for seed in range(40):
        slide = plan_benchmark_slide(seed, positive=seed < 30, texture=str(sample_slide))
        assert slide.texture == str(sample_slide)
        assert slide.mimics
        if seed >= 30:
            assert not slide.lesions and slide.label == "negative"
            continue
        tissue = sum(np.pi * e.rx * e.ry for e in slide.tissue)
        share = sum(b.area() for b in slide.lesions) / tissue
        shares.append(share)
        smallest = min(smallest, share)
    assert all(0.0007 < s < 0.025 for s in shares), shares
    assert smallest < 0.003  # lesions do get down to a few per mille
    drawn = plan_benchmark_slide(5, positive=True)
    assert drawn.texture is None and drawn == plan_benchmark_slide(5, positive=True)


def test_look_alikes_match_the_lesion_colour_not_its_structure(sample_slide: Path) -> None:
    """On one slide with a large lesion and a large look-alike: their mean RGB agree within a few
    grey levels while both differ from the normal tissue around them; the lesion's pixels are
    crowded with dark nuclei (many more pixels well below the region's median grey)."""
    mpp, r = 0.5, 700.0
    lesion, mimic = Blob(1500.0, 1500.0, r), Blob(4500.0, 1500.0, r)
    slide = SyntheticSlide(
        6000, 3000, mpp, (Ellipse(3000, 1500, 3000, 1500),), seed=3,
        lesions=(lesion,), mimics=(mimic,), texture=str(sample_slide),
    )  # fmt: skip
    side = 800

    def region(cx: float, cy: float) -> np.ndarray:
        return slide.render(cx - side / 2, cy - side / 2, side // 2, side // 2, 2.0).astype(float)

    a, b = region(lesion.cx, lesion.cy), region(mimic.cx, mimic.cy)
    normal = region(3000.0, 1500.0)
    gap = np.abs(a.reshape(-1, 3).mean(0) - b.reshape(-1, 3).mean(0))
    off = np.abs(normal.reshape(-1, 3).mean(0) - b.reshape(-1, 3).mean(0))
    print(f"lesion vs look-alike mean RGB gap {gap}, look-alike vs normal {off}")
    assert gap.max() < 6.0
    assert off.max() > 8.0

    def nuclei(img: np.ndarray) -> float:
        grey = img.mean(axis=-1)
        return float((grey < np.median(grey) - 30).mean())

    assert nuclei(a) > 1.5 * nuclei(b)


def test_lesion_nuclei_take_the_texture_s_own_nuclear_hue(sample_slide: Path) -> None:
    """The darkest pixels of a large lesion (its nuclei) and of the normal tissue beside it
    (the real nuclei) have optical densities pointing the same way within a few degrees: the
    lesion's chromatin is not a colour no real nucleus has."""
    mpp, r = 0.5, 700.0
    lesion = Blob(1500.0, 1500.0, r)
    slide = SyntheticSlide(
        6000, 3000, mpp, (Ellipse(3000, 1500, 3000, 1500),), seed=3,
        lesions=(lesion,), texture=str(sample_slide),
    )  # fmt: skip
    side = 600

    def nuclear_hue(cx: float, cy: float) -> np.ndarray:
        rgb = slide.render(cx - side / 2, cy - side / 2, side, side, 1.0).astype(float)
        od = -np.log(np.maximum(rgb, 1.0) / 255.0).reshape(-1, 3)
        dark = od[od.sum(1) >= np.quantile(od.sum(1), 0.95)]
        unit = dark / np.linalg.norm(dark, axis=1, keepdims=True)
        d = unit.mean(0)
        return d / np.linalg.norm(d)

    inside, beside = nuclear_hue(lesion.cx, lesion.cy), nuclear_hue(3700.0, 1500.0)
    angle = np.degrees(np.arccos(np.clip(inside @ beside, -1.0, 1.0)))
    print(f"lesion nuclei {inside.round(3)}, real nuclei {beside.round(3)}: {angle:.1f}°")
    assert angle < 4.5  # lesion nuclei in the base stain's haematoxylin: 7°
    assert abs(np.linalg.norm(load_texture(str(sample_slide), mpp).nuclear_hue) - 1.0) < 1e-6


def test_textured_set_writes_truth_that_rebuilds_the_pixels(
    sample_slide: Path, tmp_path: Path
) -> None:
    res = CliRunner().invoke(
        app,
        ["synth", "--out", str(tmp_path), "--n", "2", "--size", "2048x1536", "--seed", "1",
         "--texture", str(sample_slide)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    positive = [
        p
        for p in sorted(tmp_path.glob("*.truth.json"))
        if json.loads(p.read_text())["label"] == "positive"
    ]
    assert len(positive) == 1
    doc = json.loads(positive[0].read_text())
    assert doc["texture"] == str(sample_slide.resolve())
    assert 0.0005 < doc["lesion_area_fraction_of_tissue"] < 0.03
    rebuilt = load_truth(positive[0])
    assert rebuilt.texture == doc["texture"] and rebuilt.lesions
    blob = rebuilt.lesions[0]
    once = rebuilt.render(blob.cx - 64, blob.cy - 64, 128, 128, 1.0)
    again = rebuilt.render(blob.cx - 64, blob.cy - 64, 128, 128, 1.0)
    assert np.array_equal(once, again)
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / doc["mask"]["file"])) > 0
    assert mask.any() and mask.mean() < 0.05


def test_a_texture_without_tissue_is_refused(tmp_path: Path) -> None:
    glass = write_slide(tmp_path / "glass.tiff", SyntheticSlide(1024, 1024, 0.5), kind="tiff")
    res = CliRunner().invoke(
        app, ["synth", "--out", str(tmp_path / "o"), "--n", "2", "--texture", str(glass)]
    )
    assert res.exit_code == 2 and "tissue" in res.output
    from slidemill.pipeline.synth import write_benchmark_set

    with pytest.raises(InvalidInputError, match="no such slide"):
        write_benchmark_set(tmp_path / "p", n=2, texture=tmp_path / "missing.svs")
