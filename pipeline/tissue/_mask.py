"""Pure tissue detection on a low-resolution RGB image."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from skimage import filters, morphology

from slidemill.schemas import TissueMethod

# Saturation below which nothing is tissue, whatever Otsu says: on a slide that is all glass the
# Otsu threshold falls inside the noise and would call dust tissue.
MIN_SATURATION = 0.05


def hsv_saturation(rgb: NDArray[np.uint8]) -> NDArray[np.float64]:
    """HSV saturation as `skimage.color.rgb2hsv` defines it, (max - min) / max, 0 for black,
    without the hue it also computes: the plan runs this over the whole thumbnail, on the
    critical path before any tile is read."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # elementwise over the three planes: a reduction along a 3-long last axis pays numpy's
    # per-row reduction overhead once per pixel
    hi = np.maximum(np.maximum(r, g), b)
    spread = hi - np.minimum(np.minimum(r, g), b)  # uint8: max ≥ min, no wrap-around
    out = np.zeros(hi.shape, dtype=np.float64)
    np.divide(spread, hi, out=out, where=hi > 0)
    return out


def tissue_mask(rgb: NDArray[np.uint8], method: TissueMethod, mpp: float) -> NDArray[np.bool_]:
    """Boolean tissue mask, same height and width as `rgb` (H × W × 3, uint8).

    `mpp` is the image's resolution; the morphology sizes are physical (µm), so the result does
    not depend on which pyramid level the thumbnail came from.
    """
    if method is TissueMethod.NONE:
        return np.ones(rgb.shape[:2], dtype=bool)
    saturation = hsv_saturation(rgb)
    if float(saturation.max()) - float(saturation.min()) < 1e-6:
        return np.zeros(rgb.shape[:2], dtype=bool)
    threshold = max(float(filters.threshold_otsu(saturation)), MIN_SATURATION)
    mask = saturation > threshold
    # close gaps of up to ~30 µm (between nuclei, faint stroma) and drop specks under ~(60 µm)²
    radius = max(1, round(15.0 / mpp))
    mask = morphology.closing(mask, morphology.disk(radius))
    min_area = max(1, round((60.0 / mpp) ** 2))
    mask = morphology.remove_small_objects(mask, max_size=min_area)
    mask = morphology.remove_small_holes(mask, max_size=min_area)
    return np.asarray(mask, dtype=bool)
