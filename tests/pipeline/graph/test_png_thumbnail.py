"""The heatmap PNG's slide image comes from the thumbnail the plan stored, without reading the
slide, unless that thumbnail is too coarse to show (a small crop); and the PNG's figure is
drawn without laying out what it never shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidemill.pipeline.graph import png_thumbnail, render_png


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


def _drawn_with_ticks_laid_out(
    path: Path, thumbnail: np.ndarray, heatmap: np.ndarray, classes: tuple[str, ...], title: str
) -> None:
    """The figure of `render_png` built the plain way: through pyplot, with the panels' axes
    turned off but still laid out (their tick labels are measured when titles are placed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(range(1, len(classes))) if len(classes) == 2 else list(range(len(classes)))
    h, w = thumbnail.shape[:2]
    fig, axes = plt.subplots(
        1, len(shown) + 1, figsize=(4.0 * (len(shown) + 1) + 1.0, 4.0 * h / w + 0.8), squeeze=False
    )
    axes[0, 0].imshow(thumbnail)
    axes[0, 0].set_title("slide")
    image = None
    for ax, c in zip(axes[0, 1:], shown, strict=True):
        ax.imshow(thumbnail)
        image = ax.imshow(
            np.ma.masked_invalid(heatmap[c]), cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6,
            interpolation="nearest",
            extent=(0, heatmap.shape[2] * 16.0, heatmap.shape[1] * 16.0, 0),
        )  # fmt: skip
        ax.set_title(f"P({classes[c]}) per tile")
    for ax in axes[0]:
        ax.set_axis_off()
    assert image is not None
    fig.colorbar(image, ax=axes[0, 1:].tolist(), fraction=0.04, label="tile probability")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
    plt.close(fig)


@pytest.mark.parametrize("classes", [("negative", "positive"), ("a", "b", "c")])
def test_hiding_the_panels_axes_leaves_the_png_as_it_was(
    tmp_path: Path, classes: tuple[str, ...]
) -> None:
    """`render_png` hides the panels' axes so that placing the titles does not lay out tick
    labels that are never drawn; the image must be the one drawn without that, to the pixel."""
    rng = np.random.default_rng(0)
    thumbnail = rng.integers(0, 256, (300, 220, 3), dtype=np.uint8)
    heat = rng.random((len(classes), 19, 14)).astype(np.float32)
    heat[:, :3] = np.nan
    title = "slide-00001: positive (p=0.55)"
    render_png(tmp_path / "ours.png", thumbnail, heat, classes, 16.0, title)
    _drawn_with_ticks_laid_out(tmp_path / "plain.png", thumbnail, heat, classes, title)
    ours, plain = (np.asarray(Image.open(tmp_path / n)) for n in ("ours.png", "plain.png"))
    assert ours.shape == plain.shape
    np.testing.assert_array_equal(ours, plain)
