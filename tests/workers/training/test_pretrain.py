"""Self-supervised encoder pretraining: the loss against its definition, seeded views, that
training buys the stain invariance it is for, and `slidemill model pretrain` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.cohort import REPORT_FILE, WEIGHTS_FILE, pretrain, sample_tiles
from slidemill.pipeline.errors import InvalidInputError
from slidemill.pipeline.synth import write_benchmark_set
from slidemill.schemas import Normalisation, TilingSpec
from slidemill.workers import (
    ENCODERS,
    PretrainConfig,
    augment,
    file_sha256,
    load_encoder_weights,
    nt_xent,
)
from slidemill.workers import pretrain_encoder as train_encoder
from slidemill.workers.errors import TrainingError
from slidemill.workers.training import normalise


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated slides (one with a lesion) in a folder."""
    folder = tmp_path_factory.mktemp("pretrain-slides")
    write_benchmark_set(folder, n=2, seed=5, size=(2048, 1536))
    return folder


def test_nt_xent_matches_its_definition() -> None:
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    t, n = 0.5, 3
    zn = z / z.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(2 * n):
        sims = {k: math.exp(float(zn[i] @ zn[k]) / t) for k in range(2 * n) if k != i}
        total += -math.log(sims[(i + n) % (2 * n)] / sum(sims.values()))
    assert float(nt_xent(z, t)) == pytest.approx(total / (2 * n), rel=1e-5)


def test_views_are_seeded_dihedral_crops() -> None:
    rng = np.random.default_rng(0)
    tiles = torch.from_numpy(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    config, norm = PretrainConfig(), Normalisation()
    a = augment(tiles, 28, config, norm, torch.Generator().manual_seed(1))
    b = augment(tiles, 28, config, norm, torch.Generator().manual_seed(1))
    c = augment(tiles, 28, config, norm, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 28, 28)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # without colour changes a full-size view is the tile turned or flipped, plus faint noise
    plain = PretrainConfig(stain_jitter=0.0, hue_jitter=0.0, grey_probability=0.0)
    view = augment(tiles, 32, plain, norm, torch.Generator().manual_seed(3))
    rgb = view * torch.tensor(norm.std).view(1, 3, 1, 1) + torch.tensor(norm.mean).view(1, 3, 1, 1)
    x = tiles.permute(0, 3, 1, 2).float() / 255
    for i in range(4):
        candidates = [torch.rot90(f, k, (1, 2)) for f in (x[i], x[i].flip(-1)) for k in range(4)]
        assert min(float((rgb[i] - cand).abs().mean()) for cand in candidates) < 0.03


def _restained(tiles: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """The same tiles with each channel's optical density scaled (another stain batch)."""
    od = -np.log(np.clip(tiles.astype(np.float64), 1, 255) / 255)
    return np.clip(255 * np.exp(-od * np.array(gains)), 0, 255).round().astype(np.uint8)


def _retrieval(encoder: torch.nn.Module, a: np.ndarray, b: np.ndarray) -> float:
    """Share of tiles in `a` whose nearest neighbour (cosine) among `b` is the same tile."""
    encoder.eval()
    with torch.inference_mode():
        fa, fb = (
            encoder(
                normalise(torch.from_numpy(t).permute(0, 3, 1, 2).float() / 255, Normalisation())
            )
            for t in (a, b)
        )
    fa = torch.nn.functional.normalize(fa, dim=1)
    fb = torch.nn.functional.normalize(fb, dim=1)
    return float(((fa @ fb.T).argmax(1) == torch.arange(len(a))).float().mean())


@pytest.mark.slow
def test_pretraining_makes_features_stain_invariant(unlabelled: Path) -> None:
    """What pretraining is for: the same tissue under another stain maps to the same features.
    A random net is colour-driven; after a few dozen steps retrieval across stains improves."""
    sample = sample_tiles([unlabelled], TilingSpec(mpp=2.0, tile_px=48), 160, seed=0)
    tiles = sample.tiles
    held = tiles[::4]  # retrieval scored on tiles the loss never saw
    train = np.delete(tiles, np.s_[::4], axis=0)
    a, b = _restained(held, (1.25, 0.85, 1.1)), _restained(held, (0.8, 1.15, 0.9))
    torch.manual_seed(0)
    encoder = ENCODERS.build("histo_cnn", width=8)
    before = _retrieval(encoder, a, b)
    config = PretrainConfig(steps=40, batch_size=64, seed=0)
    report = train_encoder(encoder, train, config)
    after = _retrieval(encoder, a, b)
    assert len(report.losses) == 40
    assert np.mean(report.losses[-5:]) < np.mean(report.losses[:5])
    print(f"retrieval across stains: {before:.2f} before, {after:.2f} after")
    assert after > before + 0.15, (before, after)


def test_pretrain_writes_a_loadable_standardised_encoder(
    unlabelled: Path, bad_dir: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "enc"
    config = PretrainConfig(steps=3, batch_size=32, seed=1)
    slides = [unlabelled, bad_dir["truncated"]]
    sample, _ = pretrain(slides, out, tile_mpp=2.0, tile_px=48, tiles_per_slide=40,
                              config=config)  # fmt: skip
    assert [n for _, n in sample.used] == [40, 40]
    assert len(sample.left_out) == 1 and "truncated.svs" in sample.left_out[0][1]
    doc = json.loads((out / REPORT_FILE).read_text())
    assert doc["weights_sha256"] == file_sha256(out / WEIGHTS_FILE)
    assert doc["n_tiles"] == 80 and len(doc["losses"]) == 3
    assert doc["left_out"][0]["path"].endswith("truncated.svs")
    assert {p.name for p in out.iterdir()} == {REPORT_FILE, WEIGHTS_FILE}
    # the weights fit the registered encoder, whose outputs are then standardised
    encoder = ENCODERS.build("histo_cnn")
    load_encoder_weights(encoder, out / WEIGHTS_FILE)
    assert not torch.equal(load_file(str(out / WEIGHTS_FILE))["feature_std"], torch.ones(128))
    norm = Normalisation()
    x = torch.from_numpy(sample.tiles).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        feats = encoder.eval()(x)
    assert feats.mean(0).abs().max() < 0.1
    assert (feats.std(0) - 1).abs().median() < 0.1
    with pytest.raises(InvalidInputError, match="exists"):
        pretrain(slides, out, tile_mpp=2.0, tile_px=48, config=config)


def test_pretrain_is_reproducible_and_refuses_nothing_to_train_on(
    unlabelled: Path, bad_dir: dict[str, Path], tmp_path: Path
) -> None:
    config = PretrainConfig(steps=2, batch_size=16, seed=4)
    for name in ("a", "b"):
        pretrain([unlabelled], tmp_path / name, tile_mpp=4.0, tile_px=32, tiles_per_slide=20,
                 config=config)  # fmt: skip
    assert file_sha256(tmp_path / "a" / WEIGHTS_FILE) == file_sha256(tmp_path / "b" / WEIGHTS_FILE)
    with pytest.raises(InvalidInputError, match=r"empty\.svs"):
        pretrain([bad_dir["empty"]], tmp_path / "c", config=config)
    assert not (tmp_path / "c").exists()
    capped = sample_tiles([unlabelled], TilingSpec(mpp=4.0, tile_px=32), 50, max_tiles=30)
    assert [n for _, n in capped.used] == [15, 15]  # the cap is shared between the slides
    with pytest.raises(TrainingError, match="steps"):
        PretrainConfig(steps=0)


def test_cli_pretrain_then_features_use_the_encoder(unlabelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc"
    result = CliRunner().invoke(
        app,
        ["model", "pretrain", str(unlabelled), "--out", str(out), "--tile-mpp", "4",
         "--tile-px", "32", "--tiles-per-slide", "16", "--steps", "2", "--batch-size", "8"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--encoder-weights" in result.output and (out / WEIGHTS_FILE).is_file()
    features = tmp_path / "features"
    result = CliRunner().invoke(
        app,
        ["features", str(unlabelled), "--out", str(features), "--encoder", "histo_cnn",
         "--encoder-weights", str(out / WEIGHTS_FILE), "--tile-mpp", "4", "--tile-px", "32",
         "--workers", "1", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = load_file(str(features / "encoder-bundle" / "weights.safetensors"))
    trained = load_file(str(out / WEIGHTS_FILE))
    assert torch.equal(bundle["encoder.feature_std"], trained["feature_std"])
