"""Tiles and lesion regions as QuPath objects (pure): a GeoJSON FeatureCollection in level-0
pixel coordinates, in the form QuPath 0.4+ reads and writes (`PathObjectTypeAdapters`):
`properties.objectType` ("detection" / "annotation"), `classification` {name, color [r, g, b]},
`measurements` as a name → number map, and a UUID `id`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from shapely import Polygon, box, covers, points, unary_union
from shapely.geometry import mapping

from slidemill.pipeline.export._geometry import CellGeometry, positive_classes

DEFAULT_THRESHOLD = 0.5
"""The region threshold when the model brings no trained one."""

# QuPath colours a class by its `classification.color`; the first class is the benign one.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (96, 160, 96),
    (200, 0, 0),
    (240, 150, 0),
    (150, 60, 200),
    (0, 130, 200),
    (160, 100, 40),
    (230, 60, 170),
    (60, 60, 60),
)

SHAPLEY_MEASUREMENT = "shapley"
"""A tile's measurement of its share of its region's Shapley value (log-odds of the explained
class), on explained slides."""

# Object ids are UUIDs (what QuPath expects since 0.4), derived from the slide and the object
# so that exporting the same slide twice gives the same ids.
_IDS = uuid.UUID("6f1f4a52-9b53-4c1e-9d1b-5f0c3c2b7e10")

# Level-0 coordinates keep three decimals: stride edges are fractional, and equal edges of
# neighbouring cells must stay equal after rounding (they come from the same expression).
_DECIMALS = 3


@dataclass(frozen=True, slots=True)
class TileMaps:
    """One slide's tile-level outputs, N tiles and C classes."""

    slide_id: str
    """Names the slide (and seeds the object ids)."""
    class_names: tuple[str, ...]
    """The C classes."""
    rows: NDArray[np.int64]
    """(N,) grid row of each tile."""
    cols: NDArray[np.int64]
    """(N,) grid column of each tile."""
    scores: NDArray[np.float32]
    """(N, C) tile class probabilities."""
    attention: NDArray[np.float32]
    """(N,) MIL attention."""
    shapley: NDArray[np.float32] | None = None
    """(N,) each tile's share of its region's Shapley value (`slidemill explain`), NaN outside
    the bag; None when the slide was not explained."""


def class_color(index: int) -> list[int]:
    return list(PALETTE[index % len(PALETTE)])


def classification(class_names: Sequence[str], index: int) -> dict[str, Any]:
    return {"name": class_names[index], "color": class_color(index)}


def _object_id(slide_id: str, kind: str, n: int) -> str:
    return str(uuid.uuid5(_IDS, f"{slide_id}/{kind}/{n}"))


def _ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def tile_features(maps: TileMaps, geometry: CellGeometry) -> list[dict[str, Any]]:
    """One detection per tile: its heatmap cell as a square, P(class) for every class and the
    attention as measurements (QuPath's measurement maps colour by them), and for an explained
    slide its Shapley share (`SHAPLEY_MEASUREMENT`, where it has one), classified as its most
    probable class."""
    boxes = np.round(geometry.cell_boxes(maps.rows, maps.cols), _DECIMALS).tolist()
    names = [f"P({c})" for c in maps.class_names]
    best = np.argmax(maps.scores, axis=1).tolist()
    scores = maps.scores.astype(np.float64).tolist()
    attention = maps.attention.astype(np.float64).tolist()
    shapley = maps.shapley.astype(np.float64).tolist() if maps.shapley is not None else None
    features = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        measurements = dict(zip(names, scores[i], strict=True))
        measurements["attention"] = attention[i]
        if shapley is not None and np.isfinite(shapley[i]):  # JSON has no NaN
            measurements[SHAPLEY_MEASUREMENT] = shapley[i]
        features.append(
            {
                "type": "Feature",
                "id": _object_id(maps.slide_id, "tile", i),
                "geometry": {"type": "Polygon", "coordinates": [_ring(x0, y0, x1, y1)]},
                "properties": {
                    "objectType": "detection",
                    "classification": classification(maps.class_names, best[i]),
                    "measurements": measurements,
                },
            }
        )
    return features


@dataclass(frozen=True, slots=True)
class Region:
    """One connected lesion region of a class: the union of its tiles over the threshold."""

    class_index: int
    """The class whose score passed the threshold."""
    polygon: Polygon
    """Level-0 pixels; holes where enclosed tiles stayed under the threshold."""
    tiles: NDArray[np.int64]
    """(k,) indices of the tiles it is made of."""


def lesion_regions(maps: TileMaps, geometry: CellGeometry, threshold: float) -> list[Region]:
    """For each positive class (`positive_classes`), the connected parts of the union of the
    cells whose score is ≥ `threshold`, largest first."""
    boxes = np.round(geometry.cell_boxes(maps.rows, maps.cols), _DECIMALS)
    regions: list[Region] = []
    for c in positive_classes(maps.class_names):
        hot = np.flatnonzero(maps.scores[:, c] >= threshold)
        if hot.size == 0:
            continue
        union = unary_union([box(*boxes[i]) for i in hot])
        parts = list(getattr(union, "geoms", [union]))
        # which part each hot cell belongs to: the part containing its centre
        centres = points((boxes[hot, :2] + boxes[hot, 2:]) / 2)
        found = [Region(c, part, hot[covers(part, centres)]) for part in parts]
        regions += sorted(found, key=lambda r: -r.polygon.area)
    return regions


def region_features(
    maps: TileMaps, regions: Sequence[Region], threshold: float
) -> list[dict[str, Any]]:
    """One annotation per region, classified as its class, named by the rule that made it."""
    features = []
    for n, region in enumerate(regions):
        c = region.class_index
        name = maps.class_names[c]
        values = maps.scores[region.tiles, c].astype(np.float64)
        features.append(
            {
                "type": "Feature",
                "id": _object_id(maps.slide_id, "region", n),
                "geometry": mapping(region.polygon),
                "properties": {
                    "objectType": "annotation",
                    "name": f"P({name}) ≥ {threshold:.2f}",
                    "classification": classification(maps.class_names, c),
                    "measurements": {
                        "tiles": int(region.tiles.size),
                        f"max P({name})": float(values.max()),
                        f"mean P({name})": float(values.mean()),
                        "threshold": float(threshold),
                    },
                },
            }
        )
    return features


def feature_collection(maps: TileMaps, geometry: CellGeometry, threshold: float) -> dict[str, Any]:
    """The whole file: lesion annotations first (QuPath lists them on top), then the tiles."""
    regions = lesion_regions(maps, geometry, threshold)
    return {
        "type": "FeatureCollection",
        "features": [
            *region_features(maps, regions, threshold),
            *tile_features(maps, geometry),
        ],
    }
