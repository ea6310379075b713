"""The `handcrafted` encoder (stain, nuclei and texture features without weights) and "A+B"
encoder names: concatenation, its kwargs, its weights and its bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from safetensors.torch import save_file

from slidemill.schemas import Normalisation
from slidemill.workers import UnknownComponentError, encode_tiles, init_bundle, load_bundle
from slidemill.workers.models import (
    ENCODERS,
    HANDCRAFTED_FEATURES,
    ConcatEncoder,
    HandcraftedEncoder,
    load_encoder_weights,
)

PINK = np.array([235, 170, 205], np.float64)
"""Eosin-stained stroma."""
NUCLEUS = np.array([70, 40, 130], np.float64)
"""A dark haematoxylin-stained nucleus."""
PX = 112


def column(features: torch.Tensor, name: str) -> NDArray[np.float64]:
    out: NDArray[np.float64] = features[:, HANDCRAFTED_FEATURES.index(name)].double().numpy()
    return out


def normalised(tiles: NDArray[np.uint8]) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) as the inference code hands tiles to an encoder."""
    norm = Normalisation()
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return (x - mean) / std


def discs(centres: list[tuple[float, float]], radius: float, px: int = PX) -> NDArray[np.uint8]:
    """A pink tile with dark discs (nuclei), edges anti-aliased over one pixel: (px, px, 3)."""
    yy, xx = np.mgrid[0:px, 0:px] + 0.5
    cover = np.zeros((px, px))
    for cy, cx in centres:
        d = np.hypot(yy - cy, xx - cx)
        cover = np.maximum(cover, np.clip(radius + 0.5 - d, 0.0, 1.0))
    rgb = PINK * (1 - cover[..., None]) + NUCLEUS * cover[..., None]
    out: NDArray[np.uint8] = rgb.round().astype(np.uint8)
    return out


def flat_like(tile: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The hard negative: a tile of the same mean colour, without the structure."""
    mean = tile.reshape(-1, 3).mean(0).round().astype(np.uint8)
    return np.broadcast_to(mean, tile.shape).copy()


def encode(tiles: NDArray[np.uint8], mpp: float = 1.0) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = HandcraftedEncoder(mpp)(normalised(tiles))
    return out


def test_shape_dtype_names_and_no_weights() -> None:
    encoder = ENCODERS.build("handcrafted")
    assert isinstance(encoder, HandcraftedEncoder)
    assert encoder.feature_dim == len(HANDCRAFTED_FEATURES) == len(set(HANDCRAFTED_FEATURES))
    assert encoder.state_dict() == {}  # nothing to save in a bundle, nothing to train
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (5, 64, 80, 3), dtype=np.uint8)
    out = encode(tiles)
    assert out.shape == (5, encoder.feature_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_deterministic_and_independent_of_the_batch() -> None:
    rng = np.random.default_rng(1)
    tiles = np.concatenate(
        [discs([(30, 30), (60, 70), (90, 40)], 5)[None], rng.integers(0, 256, (3, PX, PX, 3))]
    ).astype(np.uint8)
    a, b = encode(tiles), encode(tiles)
    assert torch.equal(a, b)
    alone = encode(tiles[2:3])
    torch.testing.assert_close(alone[0], a[2], rtol=1e-5, atol=1e-5)


def test_blank_tiles_are_finite_glass_or_solid() -> None:
    white = np.full((1, PX, PX, 3), 255, np.uint8)
    black = np.zeros((1, PX, PX, 3), np.uint8)
    out = encode(np.concatenate([white, black]))
    assert torch.isfinite(out).all()
    assert column(out, "background_frac")[0] == 1.0 and column(out, "background_frac")[1] == 0.0
    assert column(out, "blob_count_log")[0] == 0.0  # no nuclei on glass


def test_crowded_dark_nuclei_beat_a_hard_negative_of_the_same_mean_colour() -> None:
    rng = np.random.default_rng(2)
    centres = [
        (14 + 21 * i + rng.uniform(-2, 2), 14 + 21 * j + rng.uniform(-2, 2))
        for i in range(5)
        for j in range(5)
    ]
    lesion = discs(centres, 6)
    mimic = flat_like(lesion)
    out = encode(np.stack([lesion, mimic]))
    for name in ("blob_count_log", "blob_cover", "dog_peaks_s2_log", "h_q90", "h_frac_1.0"):
        values = column(out, name)
        assert values[0] > values[1], name
    assert column(out, "blob_count_log")[1] == 0.0
    assert np.expm1(column(out, "blob_count_log")[0]) == pytest.approx(len(centres))


def test_enlarged_nuclei_have_larger_areas_and_fewer_small_peaks() -> None:
    centres = [(28.0 + 28 * i, 28.0 + 28 * j) for i in range(3) for j in range(3)]
    small, large = discs(centres, 3), discs(centres, 8)
    out = encode(np.stack([small, large]))
    area = column(out, "blob_area_log_mean")
    assert area[1] - area[0] == pytest.approx(np.log((8.5 / 3.5) ** 2), abs=0.35)
    assert column(out, "blob_large_round_log")[0] == 0.0
    assert np.expm1(column(out, "blob_large_round_log")[1]) == pytest.approx(9)
    assert column(out, "blob_round_frac")[1] == 1.0


@settings(max_examples=25, deadline=None)
@given(
    occupied=st.lists(st.booleans(), min_size=16, max_size=16),
    radius=st.integers(3, 7),
    jitter=st.lists(st.floats(-3, 3), min_size=32, max_size=32),
)
def test_separated_nuclei_are_counted_one_by_one(
    occupied: list[bool], radius: int, jitter: list[float]
) -> None:
    # a 4×4 lattice of 28-px cells, each with at most one nucleus kept off the cell's edges
    centres = [
        (14 + 28 * (k // 4) + jitter[2 * k], 14 + 28 * (k % 4) + jitter[2 * k + 1])
        for k in range(16)
        if occupied[k]
    ]
    out = encode(discs(centres, radius)[None])
    assert round(float(np.expm1(column(out, "blob_count_log")[0]))) == len(centres)
    # each blob covers its disc, give or take the smoothing's pixel
    covered = column(out, "blob_cover")[0] * PX**2
    n = len(centres)
    assert n * np.pi * (radius - 0.5) ** 2 <= covered <= n * np.pi * (radius + 1) ** 2


def test_a_tile_darkened_evenly_has_no_more_nuclei() -> None:
    """Colour alone (the hard negatives' cue) moves the stain columns, not the nuclei."""
    centres = [(30.0, 30.0), (80.0, 80.0)]
    tile = discs(centres, 5)
    darker = (tile.astype(np.float64) * 0.8).round().astype(np.uint8)
    out = encode(np.stack([tile, darker]))
    assert column(out, "od_mean")[1] > column(out, "od_mean")[0]
    assert column(out, "blob_count_log")[1] == column(out, "blob_count_log")[0]


def test_runs_under_the_inference_code_on_uint8_tiles(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    manifest = init_bundle(bundle, encoder="handcrafted", head="mean_pool", tile_px=PX, mpp=1.0)
    assert manifest.feature_dim == len(HANDCRAFTED_FEATURES)
    assert manifest.encoder_kwargs == {"mpp": 1.0}
    model = load_bundle(bundle, torch.device("cpu"))
    tiles = np.stack([discs([(40, 40)], 6), flat_like(discs([(40, 40)], 6))])
    out = encode_tiles(model, tiles, batch_size=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, encode(tiles).numpy(), rtol=1e-5, atol=1e-5)


# resolution


NUCLEAR_COLUMNS = (
    "blob_count_log",
    "blob_area_log_mean",
    "blob_round_frac",
    "blob_large_round_log",
    "blob_centres_window_max_log",
    "dog_peaks_s2_log",
    "dog_peaks_s3_log",
)


def test_the_same_nuclei_at_half_the_pixel_size_give_the_same_nuclear_columns() -> None:
    """Sizes are in µm: a field at 0.5 µm/px, told so, reads as the same field at 1 µm/px."""
    centres = [(20.0, 20.0), (20.0, 45.0), (50.0, 30.0), (80.0, 85.0), (95.0, 40.0)]
    coarse = discs(centres, 5.0)
    fine = discs([(2 * y, 2 * x) for y, x in centres], 10.0, px=2 * PX)
    at_1 = encode(coarse[None], mpp=1.0)
    at_half = encode(fine[None], mpp=0.5)
    unaware = encode(fine[None], mpp=1.0)
    for name in NUCLEAR_COLUMNS:
        np.testing.assert_allclose(
            column(at_half, name), column(at_1, name), atol=0.12, err_msg=name
        )
    # the control: read as 1 µm/px, the same nuclei are four times the area
    gap = column(unaware, "blob_area_log_mean") - column(at_1, "blob_area_log_mean")
    assert gap[0] == pytest.approx(np.log(4.0), abs=0.15)


def test_a_bundle_tells_an_encoder_that_measures_in_um_its_resolution(tmp_path: Path) -> None:
    assert ENCODERS.resolution_kwargs("handcrafted", 0.5) == {"mpp": 0.5}
    assert ENCODERS.resolution_kwargs("histo_cnn+handcrafted", 2) == {"handcrafted.mpp": 2.0}
    assert ENCODERS.resolution_kwargs("histo_cnn", 0.5) == {}
    told = init_bundle(tmp_path / "a", encoder="handcrafted", head="mean_pool", mpp=0.25)
    assert told.encoder_kwargs == {"mpp": 0.25}
    # the caller's own argument wins over the tiling's
    own = init_bundle(
        tmp_path / "b", encoder="handcrafted", head="mean_pool", mpp=0.25, encoder_kwargs={"mpp": 1}
    )
    assert own.encoder_kwargs == {"mpp": 1}
    with pytest.raises(ValueError, match="mpp must be positive"):
        HandcraftedEncoder(0.0)


# "A+B": concatenation


def test_a_joined_name_concatenates_its_parts_in_order() -> None:
    torch.manual_seed(0)
    joined = ENCODERS.build("tiny_cnn+handcrafted")
    assert isinstance(joined, ConcatEncoder)
    assert joined.feature_dims == (32, len(HANDCRAFTED_FEATURES))
    assert joined.feature_dim == 32 + len(HANDCRAFTED_FEATURES)
    x = normalised(np.stack([discs([(50, 50)], 6), discs([(20, 90)], 4)]))
    tiny = joined.parts[0]
    with torch.inference_mode():
        out = joined.eval()(x)
        expected = torch.cat([tiny(x), HandcraftedEncoder()(x)], 1)
    assert out.shape == (2, joined.feature_dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    swapped = ENCODERS.build("handcrafted+tiny_cnn")
    assert swapped.feature_dim == joined.feature_dim


def test_kwargs_of_a_joined_name_go_to_their_part() -> None:
    joined = ENCODERS.build("histo_cnn+handcrafted", **{"histo_cnn.width": 8})
    assert joined.feature_dim == 32 + len(HANDCRAFTED_FEATURES)
    with pytest.raises(UnknownComponentError, match="names no part"):
        ENCODERS.build("histo_cnn+handcrafted", width=8)
    with pytest.raises(UnknownComponentError, match="names no part"):
        ENCODERS.build("histo_cnn+handcrafted", **{"resnet18.width": 8})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("handcrafted+", "empty part"),
        ("handcrafted+handcrafted", "named twice"),
        ("handcrafted+no_such_encoder", "unknown encoder 'no_such_encoder'"),
        ("torchscript+handcrafted", "TorchScript file"),
    ],
)
def test_bad_joined_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(UnknownComponentError, match=message):
        ENCODERS.build(name)


def test_a_learned_part_keeps_its_own_weight_names() -> None:
    """A histo_cnn weights file (what `model pretrain` writes) fits histo_cnn+handcrafted."""
    torch.manual_seed(3)
    alone = ENCODERS.build("histo_cnn")
    joined = ENCODERS.build("histo_cnn+handcrafted")
    assert set(joined.state_dict()) == set(alone.state_dict())
    joined.load_state_dict(alone.state_dict(), strict=True)
    torch.testing.assert_close(joined.state_dict(), alone.state_dict(), rtol=0, atol=0)
    two = ENCODERS.build("tiny_cnn+histo_cnn")  # two learned parts: prefixed by position
    keys = set(two.state_dict())
    assert keys and all(k.startswith(("parts.0.", "parts.1.")) for k in keys)
    two.load_state_dict(two.state_dict(), strict=True)


def test_a_joined_encoder_round_trips_through_a_bundle(tmp_path: Path) -> None:
    torch.manual_seed(4)
    learned = ENCODERS.build("histo_cnn")
    learned.set_standardisation(torch.rand(128), torch.rand(128) + 0.5)  # type: ignore[operator]
    weights = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in learned.state_dict().items()}, str(weights))
    bundle = tmp_path / "bundle"
    manifest = init_bundle(
        bundle,
        encoder="histo_cnn+handcrafted",
        head="abmil_gated",
        tile_px=PX,
        encoder_weights=weights,
    )
    assert manifest.encoder == "histo_cnn+handcrafted"
    assert manifest.encoder_kwargs == {"handcrafted.mpp": 0.5}  # init_bundle's default mpp
    assert manifest.feature_dim == 128 + len(HANDCRAFTED_FEATURES)
    model = load_bundle(bundle, torch.device("cpu"))
    x = normalised(np.stack([discs([(30, 30), (70, 80)], 6), discs([], 5)]))
    with torch.inference_mode():
        got = model.encoder(x)
        expected = torch.cat([learned.eval()(x), HandcraftedEncoder(0.5)(x)], 1)
    torch.testing.assert_close(got, expected)


def test_a_timm_weights_file_fits_a_joined_timm_encoder(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    import timm

    torch.manual_seed(5)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    weights = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    joined = ENCODERS.build("timm:test_resnet+handcrafted")
    assert load_encoder_weights(joined, weights) == 0
    x = normalised(discs([(50, 50)], 6)[None])
    with torch.inference_mode():
        got = joined.eval()(x)
        head = net.eval()(x)
    torch.testing.assert_close(got[:, : head.shape[1]], head)
