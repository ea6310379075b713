"""A slide's explain.zarr written whole and read back, and the explanation as a layer of the
export files: an `explanation` channel of heatmap.ome.zarr (read with ome-zarr's Reader) and a
`shapley` measurement of each QuPath tile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from slidemill.pipeline.export import (
    EXPLANATION_CHANNEL,
    SHAPLEY_MEASUREMENT,
    ExportError,
    export_slide,
    read_explanation,
    write_explanation,
)
from slidemill.schemas.layout import (
    EXPLAIN_ATTRS_KEY,
    EXPLAIN_STORE,
    HEATMAP_OME_ZARR,
    QUPATH_GEOJSON,
    SLIDE_STORE,
    ExplainArray,
)
from tests.helpers import StoreView
from tests.pipeline.export.test_export import CLASSES, write_store

NAMES = ("h_mean", "blob_cover", "e_mean")


def explain_store(folder: Path, seed: int = 1) -> np.ndarray:
    """Write an explain.zarr for the slide store in `folder` (its second tile left out of the
    bag); returns the Shapley shares written."""
    view = StoreView(folder / SLIDE_STORE)
    gi = view["grid_index"]
    n = gi.shape[0]
    rng = np.random.default_rng(seed)
    shapley = np.asarray(rng.normal(0, 0.1, size=(n,)), dtype=np.float32)
    shapley[1] = np.nan
    region = np.arange(n, dtype=np.int32) // 3
    region[1] = -1
    write_explanation(
        folder,
        grid_index=gi,
        grid_shape=tuple(view.attrs["grid_shape"]),
        attention=view["attention"],
        tile_score=view["scores"][:, 1],
        shapley=shapley,
        region=region,
        region_shapley=np.zeros(int(region.max()) + 1),
        reason_tiles=np.array([0, 5]),
        reasons=np.array([[0.3, -0.5, 0.1], [0.0, 0.2, -0.1]], np.float32),
        info={
            "target": "positive",
            "budget": 8,
            "seed": 0,
            "reason_names": list(NAMES),
            "n_players": int(region.max()) + 1,
            "exact": False,
            "permutations": 8,
            "faithfulness": {
                "attention": {"deletion_auc": 0.5, "insertion_auc": 0.6},
                "tile_score": {"deletion_auc": 0.3, "insertion_auc": 0.8},
                "shapley": {"deletion_auc": 0.25, "insertion_auc": 0.85},
            },
        },
    )
    return shapley


def test_the_explanation_reads_back_as_written_and_replaces_an_earlier_one(tmp_path: Path) -> None:
    folder = write_store(tmp_path / "slide-a", heat_shape=(9, 14))
    first = explain_store(folder, seed=1)
    got = read_explanation(folder)
    assert got is not None and got.target == "positive" and got.reason_names == NAMES
    np.testing.assert_array_equal(got.shapley, first)  # NaN where NaN
    assert got.max_abs == pytest.approx(float(np.nanmax(np.abs(first))))
    assert got.reasons_of(0, k=2) == [
        ("blob_cover", pytest.approx(-0.5)),
        ("h_mean", pytest.approx(0.3)),
    ]
    assert got.reasons_of(3) == []
    view = StoreView(folder / EXPLAIN_STORE)
    maps, gi = view[ExplainArray.MAPS], view[ExplainArray.GRID_INDEX]
    assert maps.shape == (3, 9, 14)
    np.testing.assert_array_equal(maps[2, gi[:, 0], gi[:, 1]], first)
    assert np.isnan(maps[0]).sum() == 9 * 14 - gi.shape[0]  # off tissue
    second = explain_store(folder, seed=2)
    again = read_explanation(folder)
    assert again is not None
    np.testing.assert_array_equal(again.shapley, second)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no leftovers
    assert read_explanation(tmp_path) is None


def test_an_explanation_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    folder = write_store(tmp_path / "slide-b", heat_shape=(5, 6))
    explain_store(folder)
    root = zarr.open_group(store=str(folder / EXPLAIN_STORE), mode="r+")
    root.attrs[EXPLAIN_ATTRS_KEY] = {"format": "something-else/9"}
    with pytest.raises(ExportError, match=r"explain\.zarr: format 'something-else/9'"):
        read_explanation(folder)


def test_exports_of_an_explained_slide_carry_the_explanation_layer(tmp_path: Path) -> None:
    folder = write_store(tmp_path / "slide-c", heat_shape=(30, 40))
    export_slide(folder)
    plain = next(iter(Reader(parse_url(str(folder / HEATMAP_OME_ZARR)))()))
    assert plain.metadata["channel_names"] == list(CLASSES)
    shapley = explain_store(folder)
    export_slide(folder)
    image = next(iter(Reader(parse_url(str(folder / HEATMAP_OME_ZARR)))()))
    assert image.metadata["channel_names"] == [*CLASSES, EXPLANATION_CHANNEL]
    level0 = np.asarray(image.data[0])
    gi = StoreView(folder / SLIDE_STORE)["grid_index"]
    np.testing.assert_array_equal(level0[2, gi[:, 0], gi[:, 1]], shapley)
    np.testing.assert_array_equal(level0[:2], StoreView(folder / SLIDE_STORE)["heatmap"])
    doc = json.loads((folder / HEATMAP_OME_ZARR / "zarr.json").read_text())
    window = doc["attributes"]["ome"]["omero"]["channels"][2]["window"]
    assert window["min"] == -window["max"] == pytest.approx(-float(np.nanmax(np.abs(shapley))))
    tiles = [
        f
        for f in json.loads((folder / QUPATH_GEOJSON).read_text())["features"]
        if f["properties"]["objectType"] == "detection"
    ]
    assert len(tiles) == gi.shape[0]
    assert SHAPLEY_MEASUREMENT not in tiles[1]["properties"]["measurements"]  # not in the bag
    got = [t["properties"]["measurements"].get(SHAPLEY_MEASUREMENT) for t in tiles]
    np.testing.assert_allclose([g for i, g in enumerate(got) if i != 1], np.delete(shapley, 1))
