"""Encoders, the gated ABMIL head, model bundles and the per-worker model cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidemill.workers import (
    ENCODERS,
    HEADS,
    GatedABMIL,
    ModelBundleError,
    UnknownComponentError,
    encode_tiles,
    init_bundle,
    load_bundle,
    predict_slide,
    read_manifest,
)


@pytest.mark.parametrize(("name", "dim"), [("tiny_cnn", 32), ("resnet18", 512)])
def test_encoders_map_tiles_to_feature_vectors(name: str, dim: int) -> None:
    enc = ENCODERS.build(name).eval()
    with torch.no_grad():
        out = enc(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, dim) and enc.feature_dim == dim


def test_unknown_names_are_reported_with_the_known_ones() -> None:
    with pytest.raises(UnknownComponentError, match="tiny_cnn"):
        ENCODERS.build("vit_nonexistent")
    with pytest.raises(UnknownComponentError, match="abmil_gated"):
        HEADS.build("nope", in_dim=4, n_classes=2)


def test_abmil_shapes_and_attention() -> None:
    torch.manual_seed(0)
    head = GatedABMIL(in_dim=16, n_classes=3, hidden_dim=8, attention_dim=4).eval()
    x = torch.randn(50, 16)
    with torch.no_grad():
        out = head(x)
    assert out.logits.shape == (3,)
    assert out.attention.shape == (50,)
    assert out.tile_logits.shape == (50, 3)
    assert float(out.attention.sum()) == pytest.approx(1.0, abs=1e-5)
    assert bool((out.attention > 0).all())
    # a bag is a set: permuting the tiles permutes attention and leaves the slide logits alone
    perm = torch.randperm(50)
    with torch.no_grad():
        out2 = head(x[perm])
    torch.testing.assert_close(out2.logits, out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2.attention, out.attention[perm], atol=1e-6, rtol=1e-5)


def test_abmil_slide_logits_are_the_attention_pooled_classifier() -> None:
    # logits = W_c Σ a_i h_i = Σ a_i (W_c h_i - b) + b: check against the tile logits
    torch.manual_seed(1)
    head = GatedABMIL(in_dim=6, n_classes=2, hidden_dim=5, attention_dim=3).eval()
    out = head(torch.randn(9, 6))
    bias = head.classifier.bias
    expected = out.attention @ (out.tile_logits - bias) + bias
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_abmil_rejects_an_empty_bag() -> None:
    with pytest.raises(ValueError, match="N>0"):
        GatedABMIL(4, 2)(torch.zeros(0, 4))


def test_bundle_roundtrip_gives_the_same_outputs(tmp_path: Path) -> None:
    m1 = init_bundle(tmp_path / "a", encoder="tiny_cnn", tile_px=32, seed=5)
    init_bundle(tmp_path / "b", encoder="tiny_cnn", tile_px=32, seed=5)
    init_bundle(tmp_path / "c", encoder="tiny_cnn", tile_px=32, seed=6)
    a, b, c = (load_bundle(tmp_path / n, torch.device("cpu")) for n in "abc")
    assert a.sha256 == b.sha256 != c.sha256  # seeded: same seed, same bundle
    assert m1.weights_sha256 == a.manifest.weights_sha256
    tiles = np.random.default_rng(0).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    fa, fc = encode_tiles(a, tiles, 3), encode_tiles(c, tiles, 3)
    assert fa.shape == (7, 32)
    np.testing.assert_allclose(fa, encode_tiles(b, tiles, 7), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fa, fc)
    pred = predict_slide(a, fa)
    assert pred.probabilities.shape == (2,)
    assert pred.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert pred.tile_scores.shape == (7, 2)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    init_bundle(tmp_path / "m", encoder="tiny_cnn", tile_px=32)
    weights = tmp_path / "m" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="does not match"):
        load_bundle(tmp_path / "m")


def test_bad_manifests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelBundleError, match="not a model bundle"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"encoder": "tiny_cnn"}))
    with pytest.raises(ModelBundleError, match="invalid manifest"):
        read_manifest(tmp_path)


def test_init_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ModelBundleError, match="not empty"):
        init_bundle(tmp_path / "x", encoder="tiny_cnn")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
