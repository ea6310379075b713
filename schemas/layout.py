"""The on-disk contract: the names of every file, folder and Zarr array slidemill writes, and the
version of their layout. Every reader and writer takes its names from here, and lab systems that
read an output folder can too.

    OUT/                        a run's output folder
      .slidemill-run            marks the folder as one slidemill made (holds LAYOUT_VERSION)
      results.csv               one row per slide of the last batch
      report.html               the last batch's report: self-contained, opens without a server
      .partial/<slide_id>/      a slide being built; renamed to OUT/<slide_id>/ when whole
      <slide_id>/
        .slidemill-slide        marks the folder as a slide's that slidemill built
        result.json             SlideResult
        heatmap.png
        heatmap.ome.zarr/       the heatmap as OME-Zarr (NGFF 0.5), one channel per class, µm
        qupath.geojson          tiles (detections) and lesion regions (annotations), level-0 px
        slide.zarr/             Zarr v3 group, attributes["slidemill"] = SlideStoreAttrs
    BUNDLE/                     a model bundle
      manifest.json             ModelManifest
      weights.safetensors       keys encoder.* and head.*
      encoder.torchscript.pt    only for the torchscript encoder
      reference.safetensors     format 2 (`slidemill train`): the training features' reference
    TRAINING/                   a `slidemill train` folder
      training.json, oof_predictions.csv, fold-*/ (bundles), ensemble/ (a bundle)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

LAYOUT_VERSION: Final = 1
"""Version of this layout, recorded in every slide store's attributes (`layout_version`)."""

# A run's output folder
RESULTS_CSV: Final = "results.csv"
REPORT_HTML: Final = "report.html"
"""The batch report, rewritten with `results.csv` (`slidemill.pipeline.export`)."""
PARTIAL_DIR: Final = ".partial"
"""Slides are built under OUT/.partial/<slide_id>/ and renamed into place when complete."""
LOCK_FILE: Final = ".slidemill.lock"
"""Held by the one run writing into the folder (host, PID, start time)."""
RUN_MARK: Final = ".slidemill-run"
"""Written (holding `LAYOUT_VERSION`) into every output folder slidemill made or took empty: a
run writes only into such a folder, so a request cannot make it overwrite someone's files."""
SLIDE_MARK: Final = ".slidemill-slide"
"""Written (holding `LAYOUT_VERSION`) into every slide folder slidemill builds: publishing
replaces `OUT/<slide_id>/` only when it carries this mark (or does not exist)."""

# One slide's folder
RESULT_JSON: Final = "result.json"
HEATMAP_PNG: Final = "heatmap.png"
HEATMAP_OME_ZARR: Final = "heatmap.ome.zarr"
"""The `heatmap` array as an NGFF multiscale image, for napari and other OME-Zarr readers."""
QUPATH_GEOJSON: Final = "qupath.geojson"
"""Tiles and lesion regions as QuPath objects (File → Import objects)."""
SLIDE_STORE: Final = "slide.zarr"
STORE_ATTRS_KEY: Final = "slidemill"
"""The key of `SlideStoreAttrs` in the slide store's root attributes."""

# A model bundle
MANIFEST_JSON: Final = "manifest.json"
WEIGHTS_FILE: Final = "weights.safetensors"
ENCODER_TORCHSCRIPT: Final = "encoder.torchscript.pt"
REFERENCE_FILE: Final = "reference.safetensors"
"""The training features' reference (manifest format 2): keys `mean` (D,) and `precision` (D, D)."""

# A training folder
TRAINING_JSON: Final = "training.json"
OOF_CSV: Final = "oof_predictions.csv"
ENSEMBLE_DIR: Final = "ensemble"

# A features folder (`slidemill features`): a run folder plus the encoder the features came from
ENCODER_BUNDLE: Final = "encoder-bundle"


class StoreArray(StrEnum):
    """The arrays of a slide store (`<slide_id>/slide.zarr`); N tiles, C classes, T tile px."""

    COORDS = "coords"
    """(N, 2) int64: level-0 x, y of each tile's top-left corner."""
    GRID_INDEX = "grid_index"
    """(N, 2) int32: tile-grid row, column."""
    TISSUE_FRACTION = "tissue_fraction"
    """(N,) float32."""
    TILES = "tiles"
    """(N, T, T, 3) uint8, one task's block per chunk; only with --keep-tiles once published."""
    TILE_JPEG = "tile_jpeg"
    """(M, S) uint8: the slide's own stored JPEG tiles the tiles are cut from, zero-padded."""
    TILE_JPEG_ROWS = "tile_jpeg_rows"
    """(M, 2) int64: which stored tile each tile_jpeg row is, and its length in bytes."""
    FEATURES = "features"
    """(N, D) float32: encoder output."""
    ATTENTION = "attention"
    """(N,) float32: MIL attention, sums to 1."""
    SCORES = "scores"
    """(N, C) float32: per-tile class probabilities."""
    HEATMAP = "heatmap"
    """(C, rows, cols) float32: scores on the tile grid, NaN off tissue."""
    THUMBNAIL = "thumbnail"
    """(h, w, 3) uint8: the pyramid at 8 µm/px, what tissue detection saw."""
    TISSUE_MASK = "tissue_mask"
    """(h, w) bool."""
    QC_BLUR = "qc_blur"
    """(N,) float32: variance of the Laplacian of the tile's grey tissue pixels (0..1 scale); NaN
    for a tile that is nearly all glass. Low means out of focus."""
    QC_PEN = "qc_pen"
    """(N,) float32: share of the tile's pixels that is ink."""
    QC_BACKGROUND = "qc_background"
    """(N,) float32: share of the tile's pixels that is glass."""


TILE_ARRAYS: Final = (StoreArray.TILES, StoreArray.TILE_JPEG, StoreArray.TILE_JPEG_ROWS)
"""Tile pixels, dropped from a published store unless --keep-tiles."""
