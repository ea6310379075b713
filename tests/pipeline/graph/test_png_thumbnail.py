"""The heatmap PNG's slide image comes from the thumbnail the plan stored, without reading the
slide, unless that thumbnail is too coarse to show (a small crop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidemill.pipeline.graph import png_thumbnail


def test_the_stored_thumbnail_is_used_and_thinned_when_far_finer_than_the_png(
    sample_slide: Path,
) -> None:
    missing = Path("/nonexistent/slide.svs")  # never opened: a read would fail
    fine = np.zeros((600, 1000, 3), np.uint8)
    assert png_thumbnail(fine, missing, (50_000, 30_000), 0.5).shape == (600, 1000, 3)
    huge = np.zeros((2000, 3300, 3), np.uint8)
    assert png_thumbnail(huge, missing, (50_000, 30_000), 0.5).shape == (500, 825, 3)
    coarse = np.zeros((40, 30, 3), np.uint8)  # a small crop's: read again from the slide
    image = png_thumbnail(coarse, sample_slide, (2220, 2967), 0.499)
    assert max(image.shape[:2]) > 128 and image.std() > 0
