"""Heatmaps: tile scores onto the tile grid (pure), and a PNG over the slide thumbnail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from slidemill.schemas.files import staged


def rasterise(
    scores: NDArray[np.float32],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    shape: tuple[int, int],
) -> NDArray[np.float32]:
    """Scores (N, C) at grid cells (rows, cols) → (C, grid rows, grid cols), NaN off tissue.

    One value per grid cell: the grid is at tile resolution, so a whole slide takes kilobytes.
    """
    heat = np.full((scores.shape[1], *shape), np.nan, dtype=np.float32)
    heat[:, rows, cols] = scores.T
    return heat


def render_png(
    path: Path,
    thumbnail: NDArray[np.uint8],
    heatmap: NDArray[np.float32],
    class_names: tuple[str, ...],
    cell_px: float,
    title: str,
    flags: tuple[str, ...] = (),
) -> None:
    """The thumbnail beside one overlay per class (classes after the first when there are two),
    with a colour bar; written to a temporary name and renamed.

    `cell_px` is one grid cell (the tile stride) in thumbnail pixels. `flags` (one line each,
    the QC flags) are printed in red under the title: the image says when not to trust it.
    """
    shown = (
        list(range(1, len(class_names))) if len(class_names) == 2 else list(range(len(class_names)))
    )
    h, w = thumbnail.shape[:2]
    panel_w = 4.0
    panel_h = panel_w * h / w
    flag_h = 0.25 * len(flags)
    # a bare Figure draws on Agg by itself: no pyplot figure manager, nothing to close
    fig = Figure(figsize=(panel_w * (len(shown) + 1) + 1.0, panel_h + 0.8 + flag_h))
    axes = fig.subplots(1, len(shown) + 1, squeeze=False)
    axes[0, 0].imshow(thumbnail)
    axes[0, 0].set_title("slide")
    image = None
    grid_h, grid_w = heatmap.shape[1:]
    for ax, c in zip(axes[0, 1:], shown, strict=True):
        ax.imshow(thumbnail)
        image = ax.imshow(
            np.ma.masked_invalid(heatmap[c]),
            cmap="inferno",
            vmin=0.0,
            vmax=1.0,
            alpha=0.6,
            interpolation="nearest",
            extent=(0, grid_w * cell_px, grid_h * cell_px, 0),
        )
        ax.set_title(f"P({class_names[c]}) per tile")
    for ax in axes[0]:
        ax.set_axis_off()
        # hidden, not only undrawn: placing a panel's title otherwise lays out the tick labels
        # of axes that are never drawn
        ax.xaxis.set_visible(False)
        ax.yaxis.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[0, 1:].tolist(), fraction=0.04, label="tile probability")
    fig.suptitle(title)
    if flags:
        height = fig.get_figheight()
        fig.text(
            0.5,
            1.0 - (0.55 + flag_h) / height,
            "\n".join(f"FLAG {f}" for f in flags),
            ha="center",
            va="bottom",
            color="crimson",
            fontsize=9,
        )
        fig.subplots_adjust(top=1.0 - (0.75 + flag_h) / height)
    with staged(path, suffix=".png") as tmp:
        # zlib level 1: several times faster than the default 6 on a figure this size, for a
        # file a little larger; the PNG is written once per slide, on the critical path
        fig.savefig(tmp, dpi=100, pil_kwargs={"compress_level": 1})
