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
        explain.zarr/           `slidemill explain`: per tile attention, tile score and Shapley
                                value (ExplainArray), attributes["slidemill_explain"]
    BUNDLE/                     a model bundle
      manifest.json             ModelManifest
      weights.safetensors       keys encoder.* and head.*
      encoder.torchscript.pt    only for the torchscript encoder
      reference.safetensors     format 2 (`slidemill train`): the training features' reference
    TRAINING/                   a `slidemill train` folder
      training.json, oof_predictions.csv, fold-*/ (bundles), ensemble/ (a bundle)
"""

from __future__ import annotations

import re
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
EXPLAIN_STORE: Final = "explain.zarr"
"""`slidemill explain`'s Zarr v3 group beside the slide store (`ExplainArray`); written whole
under a temporary name, then renamed. A re-run of the slide replaces the folder, and it with it."""
EXPLAIN_ATTRS_KEY: Final = "slidemill_explain"
"""The key of the explanation's settings and summary in `explain.zarr`'s root attributes."""
EXPLAIN_FORMAT: Final = "slidemill-explain/1"
"""The version of `explain.zarr`'s layout, recorded in its attributes (`format`)."""

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

# A federated training folder (`slidemill federated serve`)
FEDERATION_JSON: Final = "federation.json"
"""Written last: the run's provenance (settings, sites and their slide counts, rounds, privacy)."""
FEDERATED_MODEL_DIR: Final = "model"
ROUNDS_DIR: Final = "rounds"
"""The global head after each completed round, so a restarted aggregator resumes."""

SITE_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
"""A site's name (`synth --site`, `federated join --name`): it names files and folders, so
letters, digits, '_', '.' and '-', from a letter or digit, at most 64 characters."""


def site_name_problem(name: str) -> str | None:
    """Why `name` cannot be a site's name, or None when it can."""
    if re.fullmatch(SITE_NAME, name):
        return None
    return f"site name {name!r}: letters, digits, '_', '.' and '-', from a letter or digit"


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


class ExplainArray(StrEnum):
    """The arrays of `<slide_id>/explain.zarr`: N tiles in slide.zarr's order (so on the same
    grid as the heatmap), P regions, M tiles with reasons, G named feature groups."""

    GRID_INDEX = "grid_index"
    """(N, 2) int32: tile-grid row, column (as in slide.zarr)."""
    ATTENTION = "attention"
    """(N,) float32: the head's attention, as the run stored it."""
    TILE_SCORE = "tile_score"
    """(N,) float32: each tile's probability of the explained class, as the run stored it."""
    SHAPLEY = "shapley"
    """(N,) float32: the tile's equal share of its region's Shapley value (log-odds of the
    explained class); NaN for tiles left out of the bag. They add up to the slide's log-odds
    minus the empty bag's."""
    REGION = "region"
    """(N,) int32: the region (player) of each tile; −1 for tiles left out of the bag."""
    REGION_SHAPLEY = "region_shapley"
    """(P,) float64: each region's Shapley value."""
    MAPS = "maps"
    """(3, rows, cols) float32: attention, tile score and Shapley share on the tile grid, NaN
    off tissue."""
    REASON_TILES = "reason_tiles"
    """(M,) int64: the tiles of the top regions given feature-level reasons."""
    REASONS = "reasons"
    """(M, G) float32: Integrated Gradients of each one's log-odds by named feature group
    (the group names in the attributes' `reason_names`); only for `handcrafted` encoders."""


TILE_ARRAYS: Final = (StoreArray.TILES, StoreArray.TILE_JPEG, StoreArray.TILE_JPEG_ROWS)
"""Tile pixels, dropped from a published store unless --keep-tiles."""
