"""The thin I/O shell: read a slide store (and its explanation, when `slidemill explain` wrote
one), write `heatmap.ome.zarr` and `qupath.geojson` into a slide's folder (each under a temporary
name, then renamed), and do it for a whole run folder."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from numpy.typing import NDArray
from pydantic import ValidationError

from slidemill.pipeline.errors import one_line
from slidemill.pipeline.export._errors import ExportError
from slidemill.pipeline.export._explanation import read_explanation
from slidemill.pipeline.export._geometry import CellGeometry
from slidemill.pipeline.export._pyramid import level_transforms, pyramid
from slidemill.pipeline.export._qupath import (
    DEFAULT_THRESHOLD,
    PALETTE,
    TileMaps,
    feature_collection,
)
from slidemill.pipeline.export._report import write_batch_report
from slidemill.pipeline.export._staging import replacing
from slidemill.schemas import InvalidInputError, SlideResult, SlideStoreAttrs
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import (
    HEATMAP_OME_ZARR,
    PARTIAL_DIR,
    QUPATH_GEOJSON,
    REPORT_HTML,
    RESULT_JSON,
    SLIDE_STORE,
    STORE_ATTRS_KEY,
    StoreArray,
)

log = logging.getLogger(__name__)

EXPORT_FILES = (HEATMAP_OME_ZARR, QUPATH_GEOJSON)
"""What `export_slide` writes into a slide's folder."""

_AXES = [
    {"name": "c", "type": "channel"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]
_CHUNK = 512


@dataclass(frozen=True, slots=True)
class SlideMaps:
    """What the exports are made of, read from one slide store."""

    attrs: SlideStoreAttrs
    """The store's attributes."""
    geometry: CellGeometry
    """Where the heatmap's cells lie."""
    tiles: TileMaps
    """Tile scores and attention (and Shapley values, when the slide was explained)."""
    heatmap: NDArray[np.float32]
    """(C, grid rows, grid cols), NaN off tissue."""
    explanation: NDArray[np.float32] | None = None
    """(grid rows, grid cols) each tile's share of its region's Shapley value (`slidemill
    explain`), NaN off tissue and outside the bag; None when the slide was not explained."""


def read_slide_maps(store: Path) -> SlideMaps:
    """Read what the exports need from a slide store, and the explanation beside it when there
    is one; `ExportError` names the store when it is missing, has no heatmap (a features-only
    run) or is unreadable."""
    try:
        root = zarr.open_group(store=str(store), mode="r")
        attrs = SlideStoreAttrs.model_validate(root.attrs[STORE_ATTRS_KEY])

        def read(name: StoreArray) -> NDArray[np.generic]:
            array = root[name]
            if not isinstance(array, zarr.Array):
                raise ExportError(f"{store}: {name} is not an array")
            return np.asarray(array[...])

        if StoreArray.HEATMAP not in root:
            raise ExportError(f"{store}: no heatmap (a features-only run has nothing to export)")
        heatmap = read(StoreArray.HEATMAP).astype(np.float32, copy=False)
        grid_index = read(StoreArray.GRID_INDEX).astype(np.int64)
        scores = read(StoreArray.SCORES).astype(np.float32, copy=False)
        attention = read(StoreArray.ATTENTION).astype(np.float32, copy=False)
    except ExportError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:  # ValidationError is a ValueError
        raise ExportError(f"{store}: cannot read the slide store ({one_line(err)})") from err
    explained = read_explanation(store.parent)
    shapley = explained.shapley if explained is not None else None
    return slide_maps(store, attrs, heatmap, grid_index, scores, attention, shapley)


def slide_maps(
    store: Path,
    attrs: SlideStoreAttrs,
    heatmap: NDArray[np.float32],
    grid_index: NDArray[np.int64],
    scores: NDArray[np.float32],
    attention: NDArray[np.float32],
    shapley: NDArray[np.float32] | None = None,
) -> SlideMaps:
    """The exports' input from a slide store's attributes and arrays, as `read_slide_maps` reads
    them (the reduce task, which holds them already, passes them itself), with each tile's
    Shapley share (N,) when the slide was explained; `ExportError` names `store` when they do
    not fit together."""
    mpp = attrs.provenance.slide_mpp
    if mpp is None:
        raise ExportError(f"{store}: the store records no µm/px (provenance.slide_mpp)")
    n_classes = len(attrs.class_names)
    if heatmap.shape != (n_classes, *attrs.grid_shape) or scores.shape[1:] != (n_classes,):
        raise ExportError(
            f"{store}: heatmap {heatmap.shape} / scores {scores.shape} do not match "
            f"{n_classes} classes on a {attrs.grid_shape} grid"
        )
    explanation = None
    if shapley is not None:
        if shapley.shape != (grid_index.shape[0],):
            raise ExportError(
                f"{store}: the explanation has {shapley.shape} values for {grid_index.shape[0]} "
                "tiles; explain the slide again (`slidemill explain`)"
            )
        explanation = np.full(attrs.grid_shape, np.nan, dtype=np.float32)
        explanation[grid_index[:, 0], grid_index[:, 1]] = shapley
    tiles = TileMaps(
        attrs.slide_id,
        attrs.class_names,
        grid_index[:, 0],
        grid_index[:, 1],
        scores,
        attention,
        None if shapley is None else shapley.astype(np.float32, copy=False),
    )
    return SlideMaps(attrs, CellGeometry.of(attrs, mpp), tiles, heatmap, explanation)


EXPLANATION_CHANNEL = "explanation"
"""The label of the OME-Zarr channel of Shapley shares, after the classes' (explained slides)."""


def write_ome_zarr(path: Path, maps: SlideMaps) -> Path:
    """The heatmap as an NGFF multiscale image at `path`: axes c, y, x (µm), one channel per
    class labelled with its name, then, for an explained slide, a channel `explanation` (the
    Shapley shares, log-odds, window symmetric about 0); levels 2× apart, each with its scale
    and translation."""
    with warnings.catch_warnings():  # ome-zarr 0.18 warns about its own Scaler default on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscales_metadata

    channels: list[dict[str, object]] = [
        {
            "label": name,
            "color": "{:02X}{:02X}{:02X}".format(*PALETTE[i % len(PALETTE)]),
            "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0},
            "active": True,
        }
        for i, name in enumerate(maps.attrs.class_names)
    ]
    heat = maps.heatmap
    if maps.explanation is not None:
        finite = np.abs(maps.explanation[np.isfinite(maps.explanation)])
        end = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        heat = np.concatenate([heat, maps.explanation[None].astype(np.float32)])
        channels.append(
            {
                "label": EXPLANATION_CHANNEL,
                "color": "FFFFFF",
                "window": {"min": -end, "max": end, "start": -end, "end": end},
                "active": False,
            }
        )
    levels = pyramid(heat)
    transforms = level_transforms(maps.geometry, len(levels))
    omero = {"channels": channels}
    # The levels are tile-grid sized arrays in memory: written straight through zarr, as
    # ome-zarr's `write_multiscale` would write them (the same array metadata and chunks,
    # test_export.py compares the two file for file) but without building and running a dask
    # graph per level, which costs more than the writing. Within a Dask worker that graph must
    # not go to the batch's own scheduler either: it would queue behind the whole batch.
    # ome-zarr's metadata writer writes, and validates, the multiscales metadata.
    with replacing(path) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w")
        for k, level in enumerate(levels):
            array = group.create_array(
                f"s{k}",
                shape=level.shape,
                dtype=level.dtype,
                chunks=(1, min(level.shape[1], _CHUNK), min(level.shape[2], _CHUNK)),
                dimension_names=[axis["name"] for axis in _AXES],
            )
            array[...] = level
        datasets = [
            {"path": f"s{k}", "coordinateTransformations": t.ngff()}
            for k, t in enumerate(transforms)
        ]
        write_multiscales_metadata(
            group, datasets, axes=_AXES, name="heatmap", metadata={"omero": omero}
        )
    return path


def write_qupath(path: Path, maps: SlideMaps, threshold: float) -> Path:
    """`qupath.geojson` at `path`: tiles as detections, regions ≥ `threshold` as annotations."""
    collection = feature_collection(maps.tiles, maps.geometry, threshold)
    write_atomic(path, json.dumps(collection, separators=(",", ":"), allow_nan=False))
    return path


def export_slide(
    folder: Path, *, threshold: float | None = None, maps: SlideMaps | None = None
) -> tuple[Path, ...]:
    """Write `heatmap.ome.zarr` and `qupath.geojson` into a slide's folder from its store.

    `threshold` is the model's trained one (regions of P(positive) ≥ it); None means 0.5.
    `maps`: the store's contents when the caller holds them already (`slide_maps`), else they
    are read from the store."""
    if maps is None:
        maps = read_slide_maps(folder / SLIDE_STORE)
    t = DEFAULT_THRESHOLD if threshold is None else threshold
    return (
        write_ome_zarr(folder / HEATMAP_OME_ZARR, maps),
        write_qupath(folder / QUPATH_GEOJSON, maps, t),
    )


@dataclass(frozen=True, slots=True)
class ExportFailure:
    """A slide folder that could not be exported."""

    slide_id: str
    """The folder's name."""
    error: str
    """One line naming the folder and the cause."""


@dataclass(frozen=True, slots=True)
class ExportReport:
    """The outcome of `export_run`."""

    written: tuple[str, ...]
    """Slides whose files were written."""
    kept: tuple[str, ...]
    """Slides that already had both files (rewritten only with `force`)."""
    failed: tuple[ExportFailure, ...]
    """Slides that could not be exported, each with its reason."""
    report: Path | None
    """The batch report written, or None when one was there already."""


def _slide_folders(run_dir: Path) -> list[Path]:
    return sorted(
        p for p in run_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != PARTIAL_DIR
    )  # fmt: skip


def export_run(
    run_dir: Path, *, force: bool = False, threshold: float | None = None
) -> ExportReport:
    """Write the export files for every done slide of a run folder that lacks them (every one
    with `force`), and `report.html` when it is missing (or with `force`).

    A slide folder that cannot be exported fails alone, with a line naming it; the others go
    on. Raises `InvalidInputError` when `run_dir` is not a run folder."""
    if not run_dir.is_dir():
        raise InvalidInputError(f"{run_dir}: not a folder; give a `slidemill run` output folder")
    written: list[str] = []
    kept: list[str] = []
    failed: list[ExportFailure] = []
    results: list[SlideResult] = []
    for folder in _slide_folders(run_dir):
        result_file = folder / RESULT_JSON
        if not result_file.exists():
            continue  # not a slide's folder
        try:
            result = SlideResult.model_validate_json(result_file.read_bytes())
        except (OSError, ValidationError) as err:
            line = f"{result_file}: unreadable result ({one_line(err)})"
            failed.append(ExportFailure(folder.name, line))
            continue
        results.append(result)
        if result.status != "done" or not result.class_names:
            continue  # failed, skipped or features-only: nothing to draw
        if not force and all((folder / name).exists() for name in EXPORT_FILES):
            kept.append(folder.name)
            continue
        try:
            export_slide(folder, threshold=threshold)
        except ExportError as err:
            failed.append(ExportFailure(folder.name, one_line(err)))
            continue
        except OSError as err:  # e.g. a folder we may not write into
            failed.append(ExportFailure(folder.name, f"{folder}: {one_line(err)}"))
            continue
        written.append(folder.name)
    if not results and not failed:
        raise InvalidInputError(f"{run_dir}: no slide results found; is it a run's output folder?")
    report = None
    if force or not (run_dir / REPORT_HTML).exists():
        report = write_batch_report(run_dir, results)
    return ExportReport(tuple(written), tuple(kept), tuple(failed), report)
