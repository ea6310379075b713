"""`--quantize int8` on a worker: the encoder's linear layers really become int8, its features stay
within a stated cosine of float32's on tissue-like tiles, and the worker's cache keeps the int8
model apart from the float one; a GPU worker ignores the request with one warning."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slidemill.workers import LoadedModel, encode_tiles, init_bundle, load_bundle
from slidemill.workers.inference import (
    effective_quantize,
    get_model,
    loaded_models,
    loaded_quantized,
    quantizable_layers,
    quantize_encoder,
    quantized_layers,
)
from slidemill.workers.models import PRESETS, PresetEncoder
from tests.helpers import TISSUE, synthetic

PLUGIN = "slidemill.workers.inference._plugin"

MIN_COSINE = 0.99
"""The agreement int8 must keep with float32, per tile."""


def tissue_tiles(n: int, px: int) -> np.ndarray:
    """`n` generated H&E-like tiles (n, px, px, 3) inside the synthetic slide's first tissue
    region, at its level 0."""
    centre = TISSUE[0]
    tiles = [
        synthetic().render(centre.cx - px + (i % 2) * px, centre.cy - px + (i // 2) * px, px, px, 1)
        for i in range(n)
    ]
    return np.stack(tiles)


def normalised(tiles: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_phikon_in_int8_keeps_its_features_within_the_stated_cosine() -> None:
    torch.manual_seed(0)
    preset = PRESETS["phikon"]
    encoder = PresetEncoder(preset, depth=2).eval()
    x = normalised(tissue_tiles(4, preset.tile_px), preset.mean, preset.std)
    assert x.std() > 0.2  # tissue, not blank glass
    with torch.inference_mode():
        reference = encoder(x)
    linear = quantizable_layers(encoder)
    assert linear == 2 * 6  # per block: query, key, value, attention output, MLP in and out
    assert quantize_encoder(encoder) == linear
    assert quantizable_layers(encoder) == 0 and quantized_layers(encoder) == linear
    with torch.inference_mode():
        int8 = encoder(x)
    cosine = nn.functional.cosine_similarity(int8, reference, dim=1)
    assert cosine.min().item() >= MIN_COSINE, cosine
    # int8 was applied: the features moved (float32 rounding alone moves them by ~1e-6)
    assert (int8 - reference).abs().max().item() > 1e-3 * reference.abs().max().item()


def test_an_encoder_without_linear_layers_stays_float32_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conv = nn.Conv2d(3, 4, 3)
    encoder = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    weight = conv.weight.clone()
    with caplog.at_level(logging.WARNING):
        assert quantize_encoder(encoder) == 0
    assert "no linear layers" in caplog.text and "float32" in caplog.text
    assert encoder[0] is conv and torch.equal(conv.weight, weight)


def test_quantising_and_encoding_in_int8_emit_no_warning() -> None:
    encoder = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao's deprecation notices would raise here
        assert quantize_encoder(encoder) == 2
        with torch.inference_mode():
            encoder(torch.randn(3, 8))


def test_int8_is_for_cpu_workers_only() -> None:
    assert effective_quantize("int8", "cpu") == "int8"
    assert effective_quantize("int8", "cuda") == "none"
    assert effective_quantize("none", "cpu") == "none"


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm's smallest ViT (linear layers, 160-px tiles) with a mean-pooling head."""
    out = tmp_path_factory.mktemp("models") / "vit"
    init_bundle(out, encoder="timm:test_vit", head="mean_pool", tile_px=160, mpp=2.0, seed=1)
    return out


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{PLUGIN}._CACHE", {})
    monkeypatch.setattr(f"{PLUGIN}._WARNED", set())


@pytest.mark.usefixtures("empty_cache")
def test_the_worker_caches_the_int8_model_apart_from_the_float_one(vit_bundle: Path) -> None:
    sha = load_bundle(vit_bundle).sha256
    plain = get_model(str(vit_bundle), sha)
    int8 = get_model(str(vit_bundle), sha, "int8")
    assert int8 is not plain and get_model(str(vit_bundle), sha, "int8") is int8
    assert quantized_layers(plain.encoder) == 0 and quantizable_layers(plain.encoder) > 0
    assert quantized_layers(int8.encoder) > 0 and quantizable_layers(int8.encoder) == 0
    assert loaded_models() == {sha} and loaded_quantized() == {sha}
    tiles = tissue_tiles(4, 160)
    a, b = encode_tiles(plain, tiles, 4), encode_tiles(int8, tiles, 4)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= MIN_COSINE and not np.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("empty_cache")
def test_a_gpu_worker_ignores_int8_with_one_warning(
    vit_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a CUDA worker, played by the CPU: the device is asked for, the bundle loaded on the CPU
    loads: list[torch.device | None] = []

    def load(bundle: Path, device: torch.device | None = None) -> LoadedModel:
        loads.append(device)
        return load_bundle(bundle, torch.device("cpu"))

    monkeypatch.setattr(f"{PLUGIN}.default_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(f"{PLUGIN}.load_bundle", load)
    sha = load_bundle(vit_bundle).sha256
    with caplog.at_level(logging.WARNING):
        first = get_model(str(vit_bundle), sha, "int8")
        assert get_model(str(vit_bundle), sha, "int8") is first
        assert get_model(str(vit_bundle), sha) is first  # the float model: nothing else held
    warnings = [r for r in caplog.records if "--quantize int8 ignored" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert quantized_layers(first.encoder) == 0 and loaded_quantized() == frozenset()
    assert loads == [torch.device("cuda")]
