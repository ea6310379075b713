"""The export's pure cores (cell geometry, the NaN-aware pyramid and its NGFF transforms, QuPath
features and lesion regions) and its files, read back with the reference readers: `ome-zarr`'s
Reader and `geojson-pydantic`."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from geojson_pydantic import FeatureCollection
from hypothesis import given, settings
from hypothesis import strategies as st
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from shapely import box, unary_union
from shapely.geometry import shape
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.export import (
    EXPORT_FILES,
    CellGeometry,
    TileMaps,
    downsample,
    export_run,
    export_slide,
    feature_collection,
    lesion_regions,
    level_transforms,
    positive_classes,
    pyramid,
    read_slide_maps,
    write_ome_zarr,
)
from slidemill.pipeline.tissue import grid_shape, origin
from slidemill.schemas import Provenance, SlideResult, SlideStoreAttrs, TilingSpec
from slidemill.schemas.layout import (
    HEATMAP_OME_ZARR,
    QUPATH_GEOJSON,
    REPORT_HTML,
    RESULT_JSON,
    SLIDE_STORE,
    STORE_ATTRS_KEY,
)
from tests.helpers import StoreView

CLASSES = ("negative", "positive")


# ---- geometry ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    tile=st.floats(16, 1024),
    overlap=st.floats(0, 0.75),
    width=st.integers(16, 20_000),
    height=st.integers(16, 20_000),
)
def test_cells_are_the_centre_stride_squares_of_their_tiles_inside_the_slide(
    tile: float, overlap: float, width: int, height: int
) -> None:
    stride = tile * (1 - overlap)
    rows, cols = grid_shape(width, height, tile, stride)
    if rows == 0 or cols == 0:
        return
    geo = CellGeometry(tile, stride, (rows, cols), (width, height), 0.5)
    r = np.array([0, rows - 1, rows // 2], dtype=np.int64)
    c = np.array([0, cols - 1, cols // 3], dtype=np.int64)
    boxes = geo.cell_boxes(r, c)
    # the tile's own corner is rounded once (`origin`): the cell is its centre square to ½ px
    x_tile, y_tile = origin(c, stride), origin(r, stride)
    np.testing.assert_allclose(boxes[:, 0], x_tile + (tile - stride) / 2, atol=0.5 + 1e-6)
    np.testing.assert_allclose(boxes[:, 1], y_tile + (tile - stride) / 2, atol=0.5 + 1e-6)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], stride)
    assert (boxes[:, :2] >= 0).all()
    assert (boxes[:, 2] <= width + 1e-6).all() and (boxes[:, 3] <= height + 1e-6).all()


def test_positive_classes() -> None:
    assert positive_classes(("neg", "pos")) == (1,)
    assert positive_classes(("normal", "a", "b")) == (1, 2)
    assert positive_classes(("only",)) == ()


# ---- the pyramid -------------------------------------------------------------------------------


def test_downsample_averages_only_tissue_and_keeps_odd_edges() -> None:
    nan = np.nan
    heat = np.array(
        [[[1.0, 3.0, 5.0], [nan, nan, nan], [0.2, nan, 7.0]]], dtype=np.float32
    )  # (1, 3, 3)
    out = downsample(heat)
    assert out.shape == (1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [2.0, 5.0])  # NaN neighbours do not dilute
    np.testing.assert_allclose(out[0, 1], [0.2, 7.0])  # the odd last row and column survive
    assert np.isnan(downsample(np.full((2, 4, 4), nan, np.float32))).all()


def test_pyramid_halves_until_the_longest_side_is_small() -> None:
    heat = np.random.default_rng(0).random((3, 300, 90), dtype=np.float32)
    levels = pyramid(heat)
    assert [lv.shape for lv in levels] == [(3, 300, 90), (3, 150, 45), (3, 75, 23), (3, 38, 12)]
    assert levels[0] is not None and np.array_equal(levels[0], heat)
    assert [lv.shape for lv in pyramid(heat[:, :10, :10])] == [(3, 10, 10)]


@settings(max_examples=40, deadline=None)
@given(tile=st.floats(32, 1024), overlap=st.floats(0, 0.75), mpp=st.floats(0.1, 2.0))
def test_each_level_lies_over_the_cells_it_averages(
    tile: float, overlap: float, mpp: float
) -> None:
    """Pixel-centre convention: level k's element j is centred on the mean of the centres of
    the level-0 cells j·2ᵏ … (j+1)·2ᵏ − 1, and one level-0 cell is `stride × mpp` µm."""
    stride = tile * (1 - overlap)
    geo = CellGeometry(tile, stride, (100, 100), (100_000, 100_000), mpp)
    transforms = level_transforms(geo, 4)
    t0, s0 = transforms[0].translation[1], transforms[0].scale[1]
    assert s0 == pytest.approx(stride * mpp)
    # the centre of cell (0, 0), from its level-0 box, as µm with slide pixel i centred at i·mpp
    x0, _, x1, _ = geo.cell_boxes(np.array([0]), np.array([0]))[0]
    assert t0 == pytest.approx(((x0 + x1) / 2 - 0.5) * mpp)
    for k, t in enumerate(transforms):
        f = 2**k
        assert t.scale == pytest.approx((1.0, s0 * f, s0 * f))
        for j in (0, 3):
            covered = np.arange(j * f, (j + 1) * f)
            assert t.translation[2] + j * t.scale[2] == pytest.approx((t0 + covered * s0).mean())


# ---- QuPath ------------------------------------------------------------------------------------


def _maps(
    scores: np.ndarray, shape: tuple[int, int], classes: tuple[str, ...] = CLASSES
) -> TileMaps:
    """Tiles at every cell of a `shape` grid, row-major, with these scores."""
    rows, cols = np.divmod(np.arange(shape[0] * shape[1], dtype=np.int64), shape[1])
    n = rows.size
    return TileMaps(
        "slide-1", classes, rows, cols, scores.astype(np.float32),
        np.full(n, 1 / n, np.float32),
    )  # fmt: skip


GEO = CellGeometry(300.0, 256.0, (6, 8), (2200, 1700), 0.5)


def _hot_blocks() -> np.ndarray:
    """Scores on the 6 × 8 grid: two separate hot blocks, one of them with a cold hole."""
    p = np.full((6, 8), 0.1)
    p[0:3, 0:3] = 0.9
    p[1, 1] = 0.2  # a hole
    p[4:6, 5:8] = 0.7
    flat = p.reshape(-1)
    return np.stack([1 - flat, flat], 1)


def test_qupath_file_is_geojson_with_qupath_objects() -> None:
    scores = _hot_blocks()
    maps = _maps(scores, GEO.grid_shape)
    doc = json.loads(json.dumps(feature_collection(maps, GEO, 0.5), allow_nan=False))
    FeatureCollection.model_validate(doc)  # the GeoJSON spec
    features = doc["features"]
    detections = [f for f in features if f["properties"]["objectType"] == "detection"]
    annotations = [f for f in features if f["properties"]["objectType"] == "annotation"]
    assert len(detections) == 48 and len(annotations) == 2
    ids = [f["id"] for f in features]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i) for i in ids)  # QuPath 0.4+ ids
    for i, f in enumerate(detections):
        props = f["properties"]
        assert set(props["measurements"]) == {"P(negative)", "P(positive)", "attention"}
        assert props["measurements"]["P(positive)"] == pytest.approx(scores[i, 1])
        best = CLASSES[int(np.argmax(scores[i]))]
        assert props["classification"]["name"] == best
        assert len(props["classification"]["color"]) == 3
        poly = shape(f["geometry"])
        assert poly.is_valid and poly.area == pytest.approx(256.0**2)
        minx, miny, maxx, maxy = poly.bounds  # no detection outside the slide
        assert minx >= 0 and miny >= 0 and maxx <= 2200 and maxy <= 1700
    for f in annotations:
        assert f["properties"]["classification"]["name"] == "positive"
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
    # the same slide exported twice gives the same file
    assert feature_collection(maps, GEO, 0.5) == feature_collection(maps, GEO, 0.5)


def test_each_region_covers_its_tiles_and_nothing_cold() -> None:
    scores = _hot_blocks()
    maps = _maps(scores, GEO.grid_shape)
    regions = lesion_regions(maps, GEO, 0.5)
    assert [r.tiles.size for r in regions] == [8, 6]  # largest first; the hole is not in it
    cells = GEO.cell_boxes(maps.rows, maps.cols)
    hot = set(np.flatnonzero(scores[:, 1] >= 0.5).tolist())
    assert set().union(*(set(r.tiles.tolist()) for r in regions)) == hot
    for region in regions:
        for i in region.tiles:
            assert region.polygon.covers(box(*cells[i]))
    union = unary_union([r.polygon for r in regions])
    for i in set(range(len(cells))) - hot:
        assert union.intersection(box(*cells[i])).area < 1e-6
    assert len(regions[0].polygon.interiors) == 1  # the cold tile is a hole
    assert lesion_regions(maps, GEO, 0.95) == []


def test_every_class_after_the_first_gets_regions_of_its_own() -> None:
    shape_ = (2, 3)
    scores = np.array(
        [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05],
         [0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]
    )  # fmt: skip
    maps = _maps(scores, shape_, ("normal", "a", "b"))
    geo = CellGeometry(256.0, 256.0, shape_, (768, 512), 0.5)
    regions = lesion_regions(maps, geo, 0.5)
    assert {(r.class_index, tuple(r.tiles)) for r in regions} == {(1, (0, 1)), (2, (3,)), (2, (5,))}


# ---- the files ---------------------------------------------------------------------------------


def write_store(folder: Path, heat_shape: tuple[int, int] = (90, 140), seed: int = 0) -> Path:
    """A slide folder with a slide store holding what the export reads (no pixels), and its
    done result.json."""
    rng = np.random.default_rng(seed)
    rows_, cols_ = heat_shape
    keep = rng.random(heat_shape) < 0.6
    rows, cols = np.nonzero(keep)
    n = rows.size
    p = rng.random(n).astype(np.float32)
    scores = np.stack([1 - p, p], 1).astype(np.float32)
    heat = np.full((2, *heat_shape), np.nan, np.float32)
    heat[:, rows, cols] = scores.T
    tiling = TilingSpec(mpp=2.0, tile_px=64)
    provenance = Provenance(
        slidemill_version="test", model_sha256="ab" * 32, tiling=tiling, slide_mpp=0.5
    )
    attrs = SlideStoreAttrs(
        slide_id=folder.name,
        slide_dimensions=(cols_ * 256, rows_ * 256),
        tile_size_level0=256.0,
        stride_level0=256.0,
        grid_shape=heat_shape,
        class_names=CLASSES,
        provenance=provenance,
    )
    root = zarr.open_group(store=str(folder / SLIDE_STORE), mode="w")
    root.attrs[STORE_ATTRS_KEY] = attrs.model_dump(mode="json")
    root.create_array("heatmap", data=heat)
    root.create_array("grid_index", data=np.stack([rows, cols], 1).astype(np.int32))
    root.create_array("scores", data=scores)
    root.create_array("attention", data=np.full(n, 1 / n, np.float32))
    result = SlideResult(
        slide_id=folder.name, path=f"/slides/{folder.name}.svs", status="done",
        class_names=CLASSES, probabilities=(0.3, 0.7), label="positive", n_tiles=n,
        provenance=provenance,
    )  # fmt: skip
    (folder / RESULT_JSON).write_text(result.model_dump_json())
    return folder


def test_ome_zarr_opens_in_the_reference_reader_with_scale_translation_and_channels(
    tmp_path: Path,
) -> None:
    folder = write_store(tmp_path / "slide-a")
    written = export_slide(folder)
    assert [p.name for p in written] == list(EXPORT_FILES)
    nodes = list(Reader(parse_url(str(folder / HEATMAP_OME_ZARR)))())
    image = nodes[0]
    meta = image.metadata
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"]
    assert [a.get("unit") for a in meta["axes"]] == [None, "micrometer", "micrometer"]
    assert meta["channel_names"] == list(CLASSES)
    # 256 level-0 px at 0.5 µm/px per cell; cell (0, 0) centred at 128 − ½ px
    transforms = meta["coordinateTransformations"]
    assert len(transforms) == len(image.data) == 3  # 140 → 70 → 35 columns
    for k, (scale, translation) in enumerate(transforms):
        f = 2**k
        assert scale == {"type": "scale", "scale": [1.0, 128.0 * f, 128.0 * f]}
        t = 63.75 + (f - 1) / 2 * 128.0
        assert translation["type"] == "translation"
        assert translation["translation"] == pytest.approx([0.0, t, t])
    heat = StoreView(folder / SLIDE_STORE)["heatmap"]
    level0 = np.asarray(image.data[0])
    assert level0.dtype == np.float32 and level0.shape == heat.shape
    np.testing.assert_array_equal(level0, heat)  # NaN where NaN (assert_array_equal: equal_nan)
    assert np.isnan(level0).any()
    np.testing.assert_array_equal(np.asarray(image.data[1]), downsample(heat))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


@pytest.mark.parametrize("fill", ["maps", "zeros"])
def test_ome_zarr_is_what_the_libraries_own_writer_writes_file_for_file(
    tmp_path: Path, fill: str
) -> None:
    """The levels are written straight through zarr rather than through ome-zarr's dask-based
    `write_multiscale`: the files must be the same, byte for byte (all-zero chunks, which zarr
    leaves unwritten, included)."""
    from ome_zarr.writer import write_multiscale, write_multiscales_metadata

    maps = read_slide_maps(write_store(tmp_path / "slide-a", heat_shape=(600, 90)) / SLIDE_STORE)
    if fill == "zeros":
        maps = dataclasses.replace(maps, heatmap=np.zeros_like(maps.heatmap))
    ours = write_ome_zarr(tmp_path / "ours.ome.zarr", maps)
    # the reference: ome-zarr's writer through dask, then the same metadata with translations
    levels = pyramid(maps.heatmap)
    group = zarr.open_group(store=str(tmp_path / "reference.ome.zarr"), mode="w")
    attrs = json.loads((ours / "zarr.json").read_text())["attributes"]["ome"]
    axes, omero = attrs["multiscales"][0]["axes"], attrs["omero"]
    with dask.config.set(scheduler="synchronous"):
        write_multiscale(
            levels, group, axes=axes, name="heatmap", metadata={"omero": omero},
            storage_options=[
                {"chunks": (1, min(lv.shape[1], 512), min(lv.shape[2], 512))} for lv in levels
            ],
        )  # fmt: skip
    datasets = [
        {"path": f"s{k}", "coordinateTransformations": t.ngff()}
        for k, t in enumerate(level_transforms(maps.geometry, len(levels)))
    ]
    write_multiscales_metadata(
        group, datasets, axes=axes, name="heatmap", metadata={"omero": omero}
    )
    assert len(levels) > 2
    assert _files(ours) == _files(tmp_path / "reference.ome.zarr")


def test_export_run_skips_done_slides_unless_forced_and_a_broken_folder_fails_alone(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    good = write_store(run / "good", (12, 9))
    broken = write_store(run / "broken", (12, 9), seed=1)
    (broken / SLIDE_STORE / "scores" / "zarr.json").write_text("{ not json")
    failed_dir = run / "failed"
    failed_dir.mkdir()
    failed = SlideResult(
        slide_id="failed",
        path="/slides/failed.svs",
        status="failed",
        error="/slides/failed.svs: truncated or corrupt",
        provenance=Provenance(slidemill_version="t"),
    )
    (failed_dir / RESULT_JSON).write_text(failed.model_dump_json())

    report = export_run(run)
    assert report.written == ("good",) and report.kept == ()
    assert [f.slide_id for f in report.failed] == ["broken"]
    line = report.failed[0].error
    assert str(broken / SLIDE_STORE) in line and "\n" not in line
    assert all((good / name).exists() for name in EXPORT_FILES)
    assert not any((failed_dir / name).exists() for name in EXPORT_FILES)
    assert report.report == run / REPORT_HTML and report.report.exists()
    assert not list(good.glob(".*"))  # no temporary folder left behind

    before = (good / QUPATH_GEOJSON).stat().st_mtime_ns
    again = export_run(run)
    assert again.written == () and again.kept == ("good",) and again.report is None
    assert (good / QUPATH_GEOJSON).stat().st_mtime_ns == before
    forced = export_run(run, force=True, threshold=0.9)
    assert forced.written == ("good",) and forced.report is not None
    doc = json.loads((good / QUPATH_GEOJSON).read_text())
    names = {f["properties"].get("name") for f in doc["features"]}
    assert "P(positive) ≥ 0.90" in names
    assert list(Reader(parse_url(str(good / HEATMAP_OME_ZARR)))())
    assert not list(good.glob(".*"))  # the old folder was swapped out, then removed


def test_export_command_reports_the_broken_folder_and_exits_1(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_store(run / "good", (6, 5))
    broken = run / "broken"
    broken.mkdir(parents=True)
    (broken / RESULT_JSON).write_text("{}")
    res = CliRunner().invoke(app, ["export", str(run)])
    assert res.exit_code == 1, res.output
    assert "broken" in res.output and "unreadable result" in res.output
    assert "exported 1 slide(s)" in res.output
    assert (run / "good" / QUPATH_GEOJSON).exists()
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a folder" in missing.output


def test_grid_math_is_consistent_with_the_geometry_used() -> None:
    # the cell edge in µm equals the model's tile stride in µm when stride_level0 comes from it
    spec = TilingSpec(mpp=2.0, tile_px=64, overlap_px=16)
    base_mpp = 0.25
    stride_level0 = spec.stride_px * spec.mpp / base_mpp
    geo = CellGeometry(spec.tile_px * spec.mpp / base_mpp, stride_level0, (1, 1), (1, 1), base_mpp)
    assert math.isclose(geo.cell_um, spec.stride_px * spec.mpp)
