"""`slidemill features --quantize int8` end to end: a real LocalCluster's worker encodes with its
ViT's linear layers in int8, the result says so, and changing the option redoes the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from slidemill.pipeline.graph import read_tile_pixels
from slidemill.workers import encode_tiles, load_bundle
from slidemill.workers.inference import quantize_encoder
from tests.helpers import StoreView, slidemill


def cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = (
        (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    )
    return out


@pytest.mark.slow
def test_features_in_int8_are_the_workers_int8_and_a_change_redoes_the_slide(
    slides_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "features"
    args: list[str | Path] = [slides_dir / "synth-svs.svs", "--out", out, "--workers", "1"]
    args += ["--encoder", "timm:test_vit", "--tile-px", "160", "--tile-mpp", "2.0"]
    args += ["--keep-tiles", "--no-progress"]  # the tiles, to encode them here too
    proc = slidemill("features", *args, "--quantize", "int8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "synth-svs" / "result.json").read_text())
    assert result["status"] == "done" and result["provenance"]["quantize"] == "int8"
    n = result["n_tiles"]
    assert n >= 4
    stored = StoreView(out / "synth-svs" / "slide.zarr")["features"][...]
    tiles = read_tile_pixels(out / "synth-svs" / "slide.zarr", 0, n, "synth-svs")
    model = load_bundle(out / "encoder-bundle")
    as_float = encode_tiles(model, tiles, n)
    assert quantize_encoder(model.encoder) > 0
    as_int8 = encode_tiles(model, tiles, n)  # one batch: the worker's automatic batch is ≥ n
    # the worker's features are int8's, not float32's, and close to float32's
    np.testing.assert_allclose(stored, as_int8, rtol=1e-4, atol=1e-4)
    assert np.abs(stored - as_float).max() > 100 * np.abs(stored - as_int8).max()
    assert cosine(stored, as_float).min() >= 0.99

    again = slidemill("features", *args)  # --quantize none: the slide is redone in float32
    assert again.returncode == 0, again.stderr[-3000:]
    assert "kept" not in again.stdout + again.stderr
    result = json.loads((out / "synth-svs" / "result.json").read_text())
    assert result["provenance"]["quantize"] == "none"
    stored = StoreView(out / "synth-svs" / "slide.zarr")["features"][...]
    np.testing.assert_allclose(stored, as_float, rtol=1e-4, atol=1e-5)
