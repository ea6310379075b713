"""The `texture` encoder: colour of the stroma between nuclei, local binary patterns, grey-level
co-occurrence and multiscale statistics, by scikit-image, at the tiles' µm/px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from slidemill.workers.models import ENCODERS, HANDCRAFTED_FEATURES, TEXTURE_FEATURES
from tests.workers.models.test_handcrafted import NUCLEUS, PINK, PX, discs, normalised

MYXOID = np.array([215, 200, 225], np.float64)
"""Pale bluish stroma."""


def column(features: torch.Tensor, name: str) -> NDArray[np.float64]:
    out: NDArray[np.float64] = features[:, TEXTURE_FEATURES.index(name)].double().numpy()
    return out


def stroma_tile(colour: NDArray[np.float64], seed: int) -> NDArray[np.uint8]:
    """`colour` stroma with a little grain and a few nuclei at random places: (PX, PX, 3)."""
    rng = np.random.default_rng(seed)
    cover = np.zeros((PX, PX))
    yy, xx = np.mgrid[0:PX, 0:PX] + 0.5
    for cy, cx in rng.uniform(8, PX - 8, (6, 2)):
        cover = np.maximum(cover, np.clip(4.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0))
    rgb = colour * (1 - cover[..., None]) + NUCLEUS * cover[..., None]
    rgb = rgb + rng.normal(0, 4, rgb.shape)
    out: NDArray[np.uint8] = rgb.clip(0, 255).round().astype(np.uint8)
    return out


def stripes(period: int) -> NDArray[np.uint8]:
    """Pink and dark-pink stripes `period` px apart: structure with a fixed colour mix."""
    rows = (np.arange(PX) // (period // 2)) % 2 == 0
    tile = np.where(rows[:, None, None], PINK, PINK * 0.75)
    out: NDArray[np.uint8] = np.broadcast_to(tile, (PX, PX, 3)).round().astype(np.uint8)
    return out


def test_one_named_column_per_output_and_the_batch_order_kept() -> None:
    enc = ENCODERS.build("texture", mpp=0.5)
    tiles = np.stack([stroma_tile(PINK, 0), stroma_tile(MYXOID, 1), discs([(56, 56)], 6)])
    out = enc(normalised(tiles))
    assert out.shape == (3, len(TEXTURE_FEATURES)) == (3, enc.feature_dim)
    assert len(set(TEXTURE_FEATURES)) == len(TEXTURE_FEATURES)
    assert torch.isfinite(out).all()
    one = enc(normalised(tiles[1:2]))
    torch.testing.assert_close(one[0], out[1])


def test_a_change_of_stroma_colour_moves_the_stroma_columns_not_the_nuclei() -> None:
    enc = ENCODERS.build("texture", mpp=0.5)
    pink = enc(normalised(np.stack([stroma_tile(PINK, s) for s in range(4)])))
    myxoid = enc(normalised(np.stack([stroma_tile(MYXOID, s) for s in range(4)])))
    # the same nuclei on both: the pale stroma has less eosin and less saturation
    assert column(myxoid, "stroma_e_mean").max() < column(pink, "stroma_e_mean").min()
    assert (
        column(myxoid, "stroma_saturation_mean").max()
        < column(pink, "stroma_saturation_mean").min()
    )
    np.testing.assert_allclose(
        column(myxoid, "stroma_frac"), column(pink, "stroma_frac"), atol=0.02
    )


def test_the_pair_statistics_tell_fine_from_coarse_structure_of_one_colour_mix() -> None:
    enc = ENCODERS.build("texture", mpp=0.5)
    fine, coarse = enc(normalised(np.stack([stripes(4), stripes(32)])))
    # 4-px stripes change every 2 px = 1 µm, so a pixel 1 µm away across the stripes is
    # always in the other stripe; with 32-px stripes one in 8 is (contrast ratio 8)
    i = TEXTURE_FEATURES.index("glcm_grey_contrast_d1um")
    assert fine[i] > 5 * coarse[i]
    assert (
        abs(
            float(fine[TEXTURE_FEATURES.index("stroma_e_mean")])
            - float(coarse[TEXTURE_FEATURES.index("stroma_e_mean")])
        )
        < 0.01
    )


def test_distances_are_physical() -> None:
    # the same stripes seen at 0.5 µm/px, and at 1 µm/px (every other pixel)
    half = stripes(16)
    at_half = ENCODERS.build("texture", mpp=0.5)(normalised(half[None]))
    at_one = ENCODERS.build("texture", mpp=1.0)(normalised(half[::2, ::2][None].copy()))
    i = TEXTURE_FEATURES.index("glcm_grey_contrast_d4um")
    assert float(at_one[0, i]) == pytest.approx(float(at_half[0, i]), rel=0.25)
    assert float(at_half[0, i]) > 0.1  # 4 µm is half the stripes' period: a real contrast


def test_a_join_with_handcrafted_is_both_widths() -> None:
    name = "handcrafted+texture"
    enc = ENCODERS.build(name, **ENCODERS.resolution_kwargs(name, 0.5))
    assert enc.feature_dim == len(HANDCRAFTED_FEATURES) + len(TEXTURE_FEATURES)
    out = enc(normalised(np.stack([stroma_tile(PINK, 0)])))
    assert out.shape == (1, enc.feature_dim)


def test_a_bad_resolution_is_refused() -> None:
    with pytest.raises(ValueError, match="mpp must be positive"):
        ENCODERS.build("texture", mpp=0.0)
