"""Slide QC with ground truth from `slidemill synth`: clean generated slides pass, and degraded
copies (blur over all or half of the tissue, pen strokes, a fluorescence-like rendering) are
flagged for the right reason, through the pipeline's own plan and tile readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidemill.pipeline.graph import plan_layout, read_tiles
from slidemill.pipeline.slides import READERS
from slidemill.pipeline.synth import DEGRADATIONS, degrade, write_benchmark_set, write_degraded_set
from slidemill.pipeline.tissue import (
    BLUR_LIMIT,
    glass,
    ink,
    qc_flags,
    thumbnail_qc,
    tile_qc,
    usable_tiles,
)
from slidemill.schemas import FlagCode, TilingSpec
from tests.helpers import synthetic

SPEC = TilingSpec(mpp=1.0, tile_px=112)
"""The demo's tiling."""

EXPECTED = {
    "blur": FlagCode.BLUR,
    "blur_part": FlagCode.BLUR,
    "pen": FlagCode.PEN_MARKS,
    "fluorescence": FlagCode.NOT_BRIGHTFIELD,
}
"""The reason each degradation must be flagged for; `too_few_tiles` may come with blur and ink
(they make tiles fail), no other flag may."""


def flags_of(path: Path) -> set[FlagCode]:
    layout = plan_layout(READERS, path, SPEC, None)
    grid = layout.grid
    with READERS.lease(path) as reader:
        tiles = read_tiles(
            reader, layout.choice, layout.stride_level0, SPEC.tile_px, SPEC.stride_px,
            grid.rows.astype(np.int64), grid.cols.astype(np.int64),
        )  # fmt: skip
    qc = tile_qc(tiles)
    thumb_mpp = layout.base_mpp * layout.dimensions[0] / layout.thumb.shape[1]
    measured = thumbnail_qc(layout.thumb, layout.mask, thumb_mpp)
    return {f.code for f in qc_flags(measured, qc.blur, qc.pen)}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[tuple[Path, str]]]:
    root = tmp_path_factory.mktemp("qc")
    clean = write_benchmark_set(root / "clean", n=3, seed=11, size=(2048, 1536))
    degraded = write_degraded_set([clean[0].path], root / "degraded")
    return [s.path for s in clean], degraded


def test_clean_generated_slides_are_not_flagged(
    sets: tuple[list[Path], list[tuple[Path, str]]],
) -> None:
    clean, _ = sets
    assert [flags_of(p) for p in clean] == [set(), set(), set()]


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_degradation_is_flagged_for_its_reason(
    sets: tuple[list[Path], list[tuple[Path, str]]], kind: str
) -> None:
    _, degraded = sets
    (path,) = [p for p, k in degraded if k == kind]
    flags = flags_of(path)
    assert EXPECTED[kind] in flags
    assert flags - {FlagCode.TOO_FEW_TILES} == {EXPECTED[kind]}
    if kind == "blur":  # all of it out of focus: nothing left to diagnose on
        assert FlagCode.TOO_FEW_TILES in flags


def test_degradations_csv_names_each_copy(
    sets: tuple[list[Path], list[tuple[Path, str]]],
) -> None:
    _, degraded = sets
    lines = (degraded[0][0].parent / "degradations.csv").read_text().splitlines()
    assert lines[0] == "slide_id,source,degradation"
    assert {tuple(line.split(",")[::2]) for line in lines[1:]} == {(p.stem, k) for p, k in degraded}


def test_the_real_sample_passes_qc(sample_slide: Path) -> None:
    # a real brightfield H&E slide, in focus, without ink
    assert flags_of(sample_slide) == set()


def test_tile_measures_on_rendered_pixels() -> None:
    slide = synthetic()
    level0 = slide.render(400, 500, 896, 896, 1.0)  # inside the first tissue region
    blurred = degrade(level0, "blur", 0.5)
    inked = degrade(level0, "pen", 0.5, seed=3)

    def tiles(img: np.ndarray) -> np.ndarray:
        half = img.reshape(448, 2, 448, 2, 3).mean(axis=(1, 3)).astype(np.uint8)  # 1 µm/px
        return half.reshape(4, 112, 4, 112, 3).swapaxes(1, 2).reshape(16, 112, 112, 3)

    sharp, soft, pen = tile_qc(tiles(level0)), tile_qc(tiles(blurred)), tile_qc(tiles(inked))
    assert np.all(sharp.blur > BLUR_LIMIT)
    assert np.all(soft.blur < BLUR_LIMIT)
    assert np.all(sharp.pen == 0)
    assert pen.pen.max() > 0.1
    assert usable_tiles(sharp.blur, sharp.pen).all()
    assert not usable_tiles(soft.blur, soft.pen).any()
    assert np.all(sharp.background < 0.5)


def test_glass_and_ink_pixels() -> None:
    px = np.array(
        [[243, 241, 245], [226, 150, 190], [110, 60, 150], [35, 65, 175], [45, 150, 65],
         [20, 20, 25]],
        dtype=np.uint8,
    )  # fmt: skip
    assert glass(px).tolist() == [True, False, False, False, False, False]
    # eosin and haematoxylin are not ink; blue, green and black marker are
    assert ink(px).tolist() == [False, False, False, True, True, True]


def _tile_qc_by_axis(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The measures spelt out with reductions over the channel axis, as the definitions read."""
    blur = np.full(len(tiles), np.nan, np.float32)
    pen = np.empty(len(tiles), np.float32)
    background = np.empty(len(tiles), np.float32)
    for i, tile in enumerate(tiles):
        lo, hi = tile.min(axis=-1).astype(np.int16), tile.max(axis=-1).astype(np.int16)
        bare = (lo >= 200) & (hi - lo <= 30)
        r, g, b = (tile[..., c].astype(np.int16) for c in range(3))
        inked = ((b - r > 70) & (b - g > 20) & (r < 90)) | ((g - r > 20) & (g - b > 10)) | (hi < 40)
        pen[i], background[i] = inked.mean(), bare.mean()
        grey = tile.astype(np.float32).mean(axis=-1) / 255.0
        lap = (
            grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
            - 4.0 * grey[1:-1, 1:-1]
        )  # fmt: skip
        tissue = ~bare[1:-1, 1:-1]
        if tissue.mean() >= 0.1:
            blur[i] = float(lap[tissue].var())
    return blur, pen, background


def test_tile_measures_are_exactly_the_channel_axis_definitions() -> None:
    """`tile_qc` works on the three channel planes (far faster than reducing a 3-long axis); its
    measures must be the definitions' to the bit, on rendered tissue, glass, ink and noise."""
    slide = synthetic()
    level0 = slide.render(400, 500, 448, 448, 1.0)
    rng = np.random.default_rng(5)
    # the grey level is a pixel's channel sum over 3: a tile holding every sum, 0 to 765
    sums = np.resize(np.arange(766), 112 * 112)
    every_channel_sum = (
        np.stack(
            [np.minimum(sums, 255), np.clip(sums - 255, 0, 255), np.clip(sums - 510, 0, 255)], -1
        )
        .astype(np.uint8)[rng.permutation(112 * 112)]
        .reshape(1, 112, 112, 3)
    )
    tiles = np.concatenate(
        [
            level0.reshape(4, 112, 4, 112, 3).swapaxes(1, 2).reshape(16, 112, 112, 3),
            degrade(level0, "pen", 0.5, seed=3)[:112, :112][None],
            rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8),
            rng.integers(190, 256, (2, 112, 112, 3), dtype=np.uint8),  # glass and near glass
            rng.integers(0, 50, (1, 112, 112, 3), dtype=np.uint8),  # near black
            np.full((1, 112, 112, 3), 235, np.uint8),
            every_channel_sum,
        ]
    )
    qc = tile_qc(tiles)
    blur, pen, background = _tile_qc_by_axis(tiles)
    np.testing.assert_array_equal(qc.blur, blur)  # NaN where NaN
    np.testing.assert_array_equal(qc.pen, pen)
    np.testing.assert_array_equal(qc.background, background)
    assert np.isnan(qc.blur).any() and (qc.pen > 0).any()
