"""Files other tools open, written from a slide's store: the heatmap as OME-Zarr (NGFF), QuPath
GeoJSON, and a self-contained HTML report per batch; and a slide's `explain.zarr`, written by
`slidemill explain` and drawn as a layer by these exports and the viewer."""

from slidemill.pipeline.export._errors import ExportError
from slidemill.pipeline.export._explanation import (
    SlideExplanation,
    read_explanation,
    write_explanation,
)
from slidemill.pipeline.export._files import (
    EXPLANATION_CHANNEL,
    EXPORT_FILES,
    ExportFailure,
    ExportReport,
    SlideMaps,
    export_run,
    export_slide,
    read_slide_maps,
    slide_maps,
    write_ome_zarr,
    write_qupath,
)
from slidemill.pipeline.export._geometry import CellGeometry, positive_classes
from slidemill.pipeline.export._pyramid import LevelTransform, downsample, level_transforms, pyramid
from slidemill.pipeline.export._qupath import (
    DEFAULT_THRESHOLD,
    SHAPLEY_MEASUREMENT,
    Region,
    TileMaps,
    feature_collection,
    lesion_regions,
    region_features,
    tile_features,
)
from slidemill.pipeline.export._report import (
    THUMB_MAX_PX,
    render_batch_report,
    result_flags,
    thumbnail_uri,
    write_batch_report,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXPLANATION_CHANNEL",
    "EXPORT_FILES",
    "SHAPLEY_MEASUREMENT",
    "THUMB_MAX_PX",
    "CellGeometry",
    "ExportError",
    "ExportFailure",
    "ExportReport",
    "LevelTransform",
    "Region",
    "SlideExplanation",
    "SlideMaps",
    "TileMaps",
    "downsample",
    "export_run",
    "export_slide",
    "feature_collection",
    "lesion_regions",
    "level_transforms",
    "positive_classes",
    "pyramid",
    "read_explanation",
    "read_slide_maps",
    "region_features",
    "render_batch_report",
    "result_flags",
    "slide_maps",
    "thumbnail_uri",
    "tile_features",
    "write_batch_report",
    "write_explanation",
    "write_ome_zarr",
    "write_qupath",
]
