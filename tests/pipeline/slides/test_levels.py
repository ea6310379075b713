"""Level selection by physical resolution (pure)."""

from __future__ import annotations

import itertools
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slidemill.pipeline.slides import MPP_TOLERANCE, choose_level

# pyramids as scanners make them: level 0 then each level 2× or 4× coarser than the last
pyramids = st.lists(st.sampled_from([2.0, 4.0]), max_size=5).map(
    lambda factors: [1.0, *itertools.accumulate(factors, operator.mul)]
)


@given(
    base=st.floats(0.1, 2.0),
    downsamples=pyramids,
    target=st.floats(0.05, 40.0),
    tile=st.integers(16, 1024),
)
def test_choice_is_coarsest_level_not_coarser_than_target(
    base: float, downsamples: list[float], target: float, tile: int
) -> None:
    c = choose_level(base, downsamples, target, tile)
    level_mpp = base * downsamples[c.level]
    if c.level > 0:
        assert level_mpp <= target * (1 + MPP_TOLERANCE)
    # no other level that is fine enough is coarser
    for ds in downsamples:
        if base * ds <= target * (1 + MPP_TOLERANCE):
            assert ds <= c.level_downsample
    assert c.tile_level0 * base == pytest.approx(tile * target)
    assert c.scale == pytest.approx(level_mpp / target)


def test_svs_like_pyramid() -> None:
    # 0.25 µm/px at 40×, levels 1, 4, 16: 0.5 µm/px must come from level 0, 1 µm/px from level 1
    assert choose_level(0.25, [1, 4, 16], 0.5, 256).level == 0
    assert choose_level(0.25, [1, 4, 16], 1.0, 256).level == 1
    assert choose_level(0.2498, [1, 4, 16], 1.0, 256).level == 1  # reported, not nominal mpp
    c = choose_level(0.25, [1, 4, 16], 0.5, 256)
    assert c.tile_level0 == 512 and c.scale == 0.5


def test_target_finer_than_level0_upsamples() -> None:
    c = choose_level(0.5, [1, 4], 0.25, 256)
    assert c.level == 0 and c.scale == pytest.approx(2.0)


def test_rejects_nonpositive_mpp() -> None:
    with pytest.raises(ValueError):
        choose_level(0.0, [1], 0.5, 256)
