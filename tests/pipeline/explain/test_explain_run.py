"""`slidemill explain` end to end: a generated slide with known lesions run with the `handcrafted`
encoder, explained on a real LocalCluster; its explain.zarr (shapes, efficiency, reasons by
feature name), its export files with the layer, the viewer serving the layer over HTTP; and on
the run's own features, deletion curves that fall faster in the truth's order than at random."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import zarr
from sklearn.linear_model import LogisticRegression
from torch import nn

from slidemill.pipeline.synth import Blob, SyntheticSlide, write_slide
from slidemill.schemas.layout import (
    EXPLAIN_ATTRS_KEY,
    EXPLAIN_STORE,
    HEATMAP_OME_ZARR,
    QUPATH_GEOJSON,
    SLIDE_STORE,
    ExplainArray,
    StoreArray,
)
from slidemill.workers import MILOutput, init_bundle
from slidemill.workers.explain import (
    MaskedBag,
    choose_players,
    deletion_curve,
    region_order,
    region_shapley,
    tile_shares,
)
from slidemill.workers.metrics import auroc
from slidemill.workers.models import HANDCRAFTED_FEATURES
from tests.helpers import TISSUE, StoreView, slidemill
from tests.viewer.conftest import start_viewer

LESIONS = (Blob(900, 1000, 330), Blob(2250, 1100, 260))
"""One lesion in each tissue region of the tests' slide."""


class LinearMax(nn.Module):
    """A head that has learned the lesion: a linear tile score, the slide's evidence its highest
    tile's. forward: (N, D) → MILOutput(logits (2,), attention (N,), tile_logits (N, 2))."""

    def __init__(self, weight: np.ndarray, bias: float) -> None:
        super().__init__()
        self.w = torch.from_numpy(weight.astype(np.float32))
        self.b = float(bias)

    def forward(self, features: torch.Tensor) -> MILOutput:
        s = features @ self.w + self.b
        zeros = torch.zeros_like(s)
        attention = torch.nn.functional.one_hot(s.argmax(), s.shape[0]).to(s.dtype)
        logits = torch.stack([zeros.max(), s.max()])
        return MILOutput(logits, attention, torch.stack([zeros, s], 1))


@pytest.mark.slow
def test_explain_writes_the_layer_the_viewer_serves_and_truth_order_deletes_fastest(
    tmp_path: Path,
) -> None:
    truth = SyntheticSlide(3072, 2048, 0.5, TISSUE, seed=3, lesions=LESIONS)
    slide = write_slide(tmp_path / "lesion.svs", truth, kind="svs")
    bundle = tmp_path / "handcrafted"
    init_bundle(bundle, encoder="handcrafted", head="abmil_gated", tile_px=64, mpp=2.0, seed=1)
    run = tmp_path / "run"
    done = slidemill("run", slide, "--model", bundle, "--out", run, "--workers", "1")
    assert done.returncode == 0, done.stderr
    explained = slidemill(
        "explain", run, "--model", bundle, "--workers", "1", "--budget", "8", "--seed", "3"
    )
    assert explained.returncode == 0, explained.stderr
    assert "explained 1 slide(s), 0 failed" in explained.stderr

    # explain.zarr: one value per tile of the slide store, in its order, on its grid
    folder = run / "lesion"
    store, view = StoreView(folder / SLIDE_STORE), StoreView(folder / EXPLAIN_STORE)
    n = store[StoreArray.GRID_INDEX].shape[0]
    info = _explain_attrs(folder)
    assert info["target"] == "positive" and info["budget"] == 8 and info["seed"] == 3
    for name in (ExplainArray.ATTENTION, ExplainArray.TILE_SCORE, ExplainArray.SHAPLEY):
        assert view[name].shape == (n,) and view[name].dtype == np.float32
    np.testing.assert_array_equal(view[ExplainArray.GRID_INDEX], store[StoreArray.GRID_INDEX])
    np.testing.assert_array_equal(view[ExplainArray.ATTENTION], store[StoreArray.ATTENTION])
    p = info["n_players"]
    assert 1 <= p <= 64 and view[ExplainArray.REGION_SHAPLEY].shape == (p,)
    assert view[ExplainArray.MAPS].shape == (3, *store.attrs["grid_shape"])
    total = float(np.nansum(view[ExplainArray.SHAPLEY]))
    assert total == pytest.approx(info["full_log_odds"] - info["empty_log_odds"], abs=1e-3)
    # reasons by the handcrafted encoder's own feature names, for the top regions' tiles
    assert info["reason_names"] == list(HANDCRAFTED_FEATURES)
    m = view[ExplainArray.REASON_TILES].shape[0]
    assert m >= 1 and view[ExplainArray.REASONS].shape == (m, len(HANDCRAFTED_FEATURES))
    # the export files carry the layer
    channels = json.loads((folder / HEATMAP_OME_ZARR / "zarr.json").read_text())
    assert channels["attributes"]["ome"]["omero"]["channels"][-1]["label"] == "explanation"
    geo = json.loads((folder / QUPATH_GEOJSON).read_text())["features"]
    assert sum("shapley" in f["properties"]["measurements"] for f in geo) == n

    # the viewer serves it, as users meet it: `slidemill view` over HTTP
    viewer = start_viewer([run], tmp_path / "viewer.log")
    try:
        api = f"{viewer.url}/api/runs/run/slides/lesion"
        slide_info = httpx.get(api).json()
        assert slide_info["heatmap"]["layers"][-1] == "explanation"
        level = slide_info["heatmap"]["max_level"] - 4
        tile = httpx.get(f"{api}/heatmap/explanation/{level}/0_0.png", params={"cmap": "coolwarm"})
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
        first = int(view[ExplainArray.REASON_TILES][0])
        top = httpx.get(f"{api}/top-tiles", params={"k": 64}).json()["explanation"]
        hit = next(t for t in top if t["index"] == first)
        assert len(hit["explanation"]["reasons"]) == 3
        assert {r["feature"] for r in hit["explanation"]["reasons"]} <= set(HANDCRAFTED_FEATURES)
    finally:
        viewer.stop()

    # on the run's own features, a head that learned the lesion: its deletion curve falls faster
    # removing the regions in the truth's order than in random ones, and so does its Shapley
    # values' order, which finds the lesion
    features = store[StoreArray.FEATURES].astype(np.float32)
    size = store.attrs["tile_size_level0"]
    lesion = np.array(
        [truth.lesion_fraction(x, y, size, size) for x, y in store[StoreArray.COORDS]]
    )
    is_lesion = lesion >= 0.5
    assert 0 < is_lesion.sum() < n
    mean, std = features.mean(0), features.std(0) + 1e-6
    fit = LogisticRegression(max_iter=2000).fit((features - mean) / std, is_lesion)
    head = LinearMax(fit.coef_[0] / std, float(fit.intercept_[0] - (fit.coef_[0] / std) @ mean))
    players = choose_players(store[StoreArray.GRID_INDEX], 64)
    bag = MaskedBag(head, torch.from_numpy(features), 1, 2)

    def prob(keep: np.ndarray) -> np.ndarray:
        return np.asarray(1 / (1 + np.exp(-bag(torch.from_numpy(keep)).numpy())))

    by_truth = deletion_curve(prob, players, region_order(players, lesion)).auc
    rng = np.random.default_rng(0)
    at_random = [
        deletion_curve(prob, players, region_order(players, lesion, rng)).auc for _ in range(20)
    ]
    assert by_truth < np.mean(at_random) - 0.1
    shares = tile_shares(players, region_shapley(bag, players, budget=16, seed=0).values)
    assert deletion_curve(prob, players, region_order(players, shares)).auc < np.mean(at_random)
    assert auroc(is_lesion, shares) > 0.8


def _explain_attrs(folder: Path) -> dict[str, Any]:
    doc = zarr.open_group(store=str(folder / EXPLAIN_STORE), mode="r").attrs[EXPLAIN_ATTRS_KEY]
    assert isinstance(doc, dict)
    return doc
