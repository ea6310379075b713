"""Tissue detection on generated slides with known tissue, and on the real sample slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage import color

from slidemill.pipeline.slides import open_slide, read_thumbnail
from slidemill.pipeline.tissue import hsv_saturation, tissue_mask
from slidemill.schemas import TissueMethod
from tests.helpers import synthetic


def test_mask_matches_the_planted_tissue(slides_dir: Path) -> None:
    slide = synthetic()
    reader = open_slide(slides_dir / "synth-svs.svs")
    thumb = read_thumbnail(reader, 0.5, 8.0)
    mask = tissue_mask(thumb, TissueMethod.OTSU_SATURATION, 8.0)
    ys = (np.arange(thumb.shape[0]) + 0.5) * reader.dimensions[1] / thumb.shape[0]
    xs = (np.arange(thumb.shape[1]) + 0.5) * reader.dimensions[0] / thumb.shape[1]
    truth = slide.tissue_at(*np.meshgrid(xs, ys))
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95


def test_blank_glass_has_no_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 2, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, TissueMethod.OTSU_SATURATION, 8.0).any()
    assert not tissue_mask(
        np.full((50, 50, 3), 255, np.uint8), TissueMethod.OTSU_SATURATION, 8
    ).any()


def test_method_none_keeps_everything() -> None:
    assert tissue_mask(np.zeros((4, 5, 3), np.uint8), TissueMethod.NONE, 8.0).all()


def test_real_slide_tissue_fraction_matches_an_independent_measure(sample_slide: Path) -> None:
    """The reference is measured another way: at full resolution (0.5 µm/px, not 8), by
    brightness (not saturation), with no morphology: a pixel is tissue when its darkest channel
    is below 210, i.e. it is not the white glass. On this H&E slide that is every stained
    structure. Our mask may only be a little larger: closing fills the small white gaps inside
    the tissue (lumens, tears) that the pixel rule counts as glass."""
    reader = open_slide(sample_slide)
    assert reader.mpp is not None
    full = reader.read_region((0, 0), 0, reader.dimensions)
    reference = float((full.min(axis=-1) < 210).mean())
    fractions = []
    for mpp in (4.0, 8.0, 16.0):
        thumb = read_thumbnail(reader, reader.mpp, mpp)
        mask = tissue_mask(thumb, TissueMethod.OTSU_SATURATION, mpp)
        fractions.append(float(mask.mean()))
    assert 0.25 < reference < 0.45  # the slide is about a third tissue
    for f in fractions:
        assert reference - 0.01 <= f <= reference + 0.05
    assert max(fractions) - min(fractions) < 0.04  # morphology sizes are physical


def test_saturation_is_skimages_hsv_saturation() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    rgb[0, :3] = ((0, 0, 0), (255, 255, 255), (7, 7, 7))  # black, white, grey: no saturation
    ours = hsv_saturation(rgb)
    np.testing.assert_allclose(ours, color.rgb2hsv(rgb)[..., 1], rtol=0, atol=1e-12)
    assert ours[0, :3].tolist() == [0.0, 0.0, 0.0]
