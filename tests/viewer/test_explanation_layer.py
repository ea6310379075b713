"""The viewer serves an explained slide's explanation (HTTP, in process): an `explanation` layer
drawn with a diverging colormap, 0 at its middle; each tile's Shapley share, region and reasons
under the pointer; the tiles of highest share; and a new explanation replaces the cached one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from fastapi.testclient import TestClient
from PIL import Image

from slidemill.viewer import (
    CellGrid,
    FolderCatalog,
    Pyramid,
    colormap_lut,
    create_viewer_app,
    signed_values,
)
from tests.helpers import StoreView
from tests.pipeline.export.test_explanation import NAMES, explain_store
from tests.pipeline.export.test_export import write_store

SHAPE = (6, 8)
"""Grid rows, columns of the made-up slide (256 level-0 px per cell)."""


def _slide(run: Path, name: str) -> Path:
    folder = write_store(run / name, heat_shape=SHAPE, seed=4)
    root = zarr.open_group(store=str(folder / "slide.zarr"), mode="r+")
    root.create_array("thumbnail", data=np.full((24, 32, 3), 230, np.uint8))
    return folder


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    run = tmp_path / "night-9"
    run.mkdir()
    _slide(run, "plain")
    explain_store(_slide(run, "explained"), seed=1)
    with TestClient(create_viewer_app(FolderCatalog([run]))) as client:
        yield client, run


def api(*parts: str) -> str:
    return "/".join(["/api/runs/night-9/slides", *parts])


def test_an_explained_slide_has_an_explanation_layer_and_a_plain_one_has_not(
    served: tuple[TestClient, Path],
) -> None:
    client, _ = served
    info = client.get(api("explained")).json()
    assert info["heatmap"]["layers"] == ["negative", "positive", "attention", "explanation"]
    e = info["explanation"]
    assert e["target"] == "positive" and e["colormap"] == "coolwarm"
    assert e["colormap"] in info["heatmap"]["colormaps"] and e["reason_names"] == list(NAMES)
    plain = client.get(api("plain")).json()
    assert plain["heatmap"]["layers"] == ["negative", "positive", "attention"]
    assert plain["explanation"] is None
    assert client.get(api("plain", "heatmap", "explanation", "0", "0_0.png")).status_code == 404


def test_the_explanation_layer_draws_each_share_with_zero_in_the_middle(
    served: tuple[TestClient, Path],
) -> None:
    client, run = served
    info = client.get(api("explained")).json()
    m = info["explanation"]["max_abs"]
    pyramid = Pyramid(info["width"], info["height"], info["heatmap"]["tile_size"])
    level = pyramid.max_level - 3  # 8 level-0 px a pixel: the whole slide in one tile
    d = pyramid.downsample(level)
    got = client.get(
        api("explained", "heatmap", "explanation", str(level), "0_0.png"),
        params={"cmap": "coolwarm"},
    )
    assert got.status_code == 200
    pixels = np.asarray(Image.open(io.BytesIO(got.content)).convert("RGBA"))
    view = StoreView(run / "explained" / "explain.zarr")
    shapley, gi = view["shapley"], view["grid_index"]
    lut = colormap_lut("coolwarm")
    grid = CellGrid(256.0, 256.0, SHAPE)
    for (r, c), v in zip(gi, shapley, strict=True):
        x, y, w, h = grid.cell_box(int(r), int(c))
        pixel = pixels[int((y + h / 2) / d), int((x + w / 2) / d)]
        if np.isnan(v):
            assert pixel[3] == 0  # out of the bag: not drawn
        else:
            mapped = 0.5 + 0.5 * v / m
            assert tuple(pixel) == (*lut[int(mapped * 255 + 0.5)], 255), (r, c)
    zero = signed_values(np.zeros(1, np.float32), np.array([[0, 0]]), (1, 1), 0.2)
    assert zero[0, 0] == 0.5  # no contribution: the colormap's white middle


def test_the_tile_under_the_pointer_says_why_and_the_top_tiles_are_the_highest_shares(
    served: tuple[TestClient, Path],
) -> None:
    client, run = served
    view = StoreView(run / "explained" / "explain.zarr")
    shapley, gi = view["shapley"], view["grid_index"]
    grid = CellGrid(256.0, 256.0, SHAPE)
    x, y, w, h = grid.cell_box(int(gi[0, 0]), int(gi[0, 1]))
    tile = client.get(api("explained", "tile-at"), params={"x": x + w / 2, "y": y + h / 2})
    e = tile.json()["tile"]["explanation"]
    assert e["shapley"] == pytest.approx(float(shapley[0])) and e["region"] == 0
    assert [r["feature"] for r in e["reasons"]] == ["blob_cover", "h_mean", "e_mean"]
    x, y, w, h = grid.cell_box(int(gi[1, 0]), int(gi[1, 1]))
    left_out = client.get(api("explained", "tile-at"), params={"x": x + w / 2, "y": y + h / 2})
    assert left_out.json()["tile"]["explanation"] == {"shapley": None, "region": -1, "reasons": []}
    top = client.get(api("explained", "top-tiles"), params={"k": 2}).json()["explanation"]
    assert [t["index"] for t in top] == list(np.argsort(-np.nan_to_num(shapley, nan=-9))[:2])
    assert client.get(api("plain", "top-tiles")).json()["explanation"] is None


def test_a_new_explanation_is_served_in_place_of_the_cached_one(
    served: tuple[TestClient, Path],
) -> None:
    client, run = served
    before = client.get(api("explained")).json()["explanation"]["max_abs"]
    second = explain_store(run / "explained", seed=2)
    after = client.get(api("explained")).json()["explanation"]["max_abs"]
    assert after == pytest.approx(float(np.nanmax(np.abs(second)))) and after != before
