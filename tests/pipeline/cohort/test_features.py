"""`slidemill features`: the graph up to the encoder, with the encoder kept beside the features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slidemill.pipeline.graph import read_tile_pixels
from slidemill.workers import encode_tiles, load_bundle
from tests.helpers import StoreView, slidemill


@pytest.mark.slow
def test_features_are_the_saved_encoders_output_and_reused(
    slides_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "features"
    args: list[str | Path] = ["--out", out, "--encoder", "tiny_cnn", "--tile-px", "64"]
    args += ["--tile-mpp", "2.0"]
    args += ["--keep-tiles"]  # to recompute the features from them
    proc = slidemill("features", slides_dir, *args, "--workers", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    encoder = load_bundle(out / "encoder-bundle")
    assert encoder.manifest.encoder == "tiny_cnn" and encoder.manifest.tile_px == 64
    for sid in ("synth-svs", "synth-tiff"):
        result = json.loads((out / sid / "result.json").read_text())
        assert result["status"] == "done" and result["label"] is None
        assert result["provenance"]["model_sha256"] == encoder.sha256
        root = StoreView(out / sid / "slide.zarr")
        store = out / sid / "slide.zarr"
        feats, tiles = root["features"][...], read_tile_pixels(store, 0, result["n_tiles"], sid)
        assert feats.shape == (result["n_tiles"], 32)
        assert "scores" not in root and "heatmap" not in root
        # the features are exactly what the saved encoder gives for the stored tiles
        np.testing.assert_allclose(feats, encode_tiles(encoder, tiles, 16), rtol=1e-4, atol=1e-5)
    again = slidemill("features", slides_dir, *args, "--no-progress")
    assert again.returncode == 0 and "kept 2 slide(s)" in again.stderr
    other = slidemill("features", slides_dir, *args[:3], "resnet18", *args[4:], "--no-progress")
    assert other.returncode == 2
    assert "holds features of tiny_cnn" in other.stderr
