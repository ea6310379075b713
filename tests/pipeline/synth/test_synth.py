"""The synthetic benchmark: pixels are a pure function of level-0 coordinates, lesions are where
the truth says and inside tissue, and only structure (not colour) tells lesions from normal
tissue."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
from numpy.typing import NDArray
from PIL import Image
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.slides import open_slide, read_thumbnail
from slidemill.pipeline.synth import (
    LABEL_MARKER_RGB,
    MASK_MPP,
    BenchmarkSlide,
    Blob,
    SyntheticSlide,
    load_truth,
    plan_benchmark_slide,
    truth_beside,
    write_benchmark_set,
)
from slidemill.pipeline.tissue import tissue_mask
from slidemill.schemas import TissueMethod

# 64-px tiles at 2 µm/px from 0.5 µm/px slides: what the tiny test bundle sees.
TILE0 = 256
"""Tile side in level-0 pixels."""
DS = 4


def auroc(pos: NDArray[np.float64], neg: NDArray[np.float64]) -> float:
    """Mann–Whitney AUROC with ties counted one half (average ranks)."""
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    ranks = np.empty(scores.size)
    ranks[order] = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def dark_fraction(tile: NDArray[np.uint8]) -> float:
    """Share of a tile's pixels at least 25 grey levels darker than its median: nuclei, measured
    against the tile's own background so that a uniformly darker stain does not count."""
    grey = tile.astype(np.float32).mean(axis=-1)
    return float((grey < np.median(grey) - 25).mean())


def points_in(blob: Blob, n: int = 24) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x0, y0, x1, y1 = blob.bbox()
    x, y = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    inside = blob.contains(x, y)
    return x[inside], y[inside]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> list[BenchmarkSlide]:
    """Three written slides (two positive), small enough to write in about a second."""
    out = tmp_path_factory.mktemp("bench")
    return write_benchmark_set(out, n=3, positive_fraction=0.67, seed=4, size=(2048, 1536))


@pytest.fixture(scope="module")
def planned() -> list[SyntheticSlide]:
    """Plans only (nothing rendered): 24 positive and 16 negative slides of the default size."""
    return [plan_benchmark_slide(s, positive=s < 24) for s in range(40)]


def test_rendering_is_deterministic_and_regions_render_alone() -> None:
    slide = plan_benchmark_slide(11, positive=True, width=3000, height=2000)
    lesion = slide.lesions[0]
    x, y = int(lesion.cx) - 150, int(lesion.cy) - 100  # a lesion's edge and its surroundings
    a = slide.render(x, y, 300, 200, 1)
    np.testing.assert_array_equal(a, slide.render(x, y, 300, 200, 1))
    assert plan_benchmark_slide(11, positive=True, width=3000, height=2000) == slide
    # the same pixels cut from a larger region with another origin (other internal blocks)
    big = slide.render(x - 37, y - 251, 700, 500, 1)[251:451, 37:337]
    diff = np.abs(a.astype(int) - big.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float rounding only
    other = plan_benchmark_slide(12, positive=True, width=3000, height=2000)
    assert np.abs(other.render(x, y, 300, 200, 1).astype(int) - a).mean() > 5


def test_levels_are_box_averages_of_level_0(bench: list[BenchmarkSlide]) -> None:
    written = next(b for b in bench if b.label == "positive")
    slide = written.slide
    lesion = slide.lesions[0]
    # a lesion's edge and its surroundings, on the level-2 pixel grid (OpenSlide resamples
    # a region that starts between pixels)
    x, y = (int(lesion.cx) - 512) // 16 * 16, (int(lesion.cy) - 256) // 16 * 16
    fine = slide.render(x, y, 1024, 512, 1).astype(np.float64)
    coarse = slide.render(x, y, 256, 128, 4).astype(np.float64)
    assert np.abs(coarse - fine.reshape(128, 4, 256, 4, 3).mean(axis=(1, 3))).max() <= 1.0
    # nuclei survive at 2 µm/px: the region is textured, not a flat colour
    assert coarse.mean(axis=-1).std() > 8
    # the written pyramid holds the same pixels at every level, up to JPEG (4:2:0) error:
    # well below what a one-pixel misalignment gives
    reader = openslide.OpenSlide(str(written.path))
    for level, ds in enumerate((1, 4, 16)):
        h, w = 512 // ds, 1024 // ds
        expected = fine.reshape(h, ds, w, ds, 3).mean(axis=(1, 3))
        got = reader.read_region((x, y), level, (w, h)).convert("RGB")
        error = np.abs(np.asarray(got, dtype=np.float64) - expected)
        shifted = np.abs(expected[1:, 1:] - expected[:-1, :-1]).mean()
        assert error.mean() < min(8.0, 0.6 * shifted), (level, error.mean(), shifted)


def test_planted_regions_lie_inside_tissue_and_apart(planned: list[SyntheticSlide]) -> None:
    for slide in planned:
        for blob in (*slide.lesions, *slide.mimics):
            x, y = points_in(blob)
            assert x.size > 100 and slide.tissue_at(x, y).all()
        for lesion in slide.lesions:
            x, y = points_in(lesion)
            assert not any(m.contains(x, y).any() for m in slide.mimics)


def test_labels_lesions_sizes_and_hard_negatives(planned: list[SyntheticSlide]) -> None:
    positives = [s for s in planned if s.label == "positive"]
    negatives = [s for s in planned if s.label == "negative"]
    assert len(positives) == 24 and all(1 <= len(s.lesions) <= 3 for s in positives)
    assert len(negatives) == 16 and all(not s.lesions for s in negatives)
    # every slide, negative or positive, has lesion-coloured look-alikes
    assert all(s.mimics for s in planned)
    # lesion sizes span small (~150 µm) to large (~1 mm and more)
    diameters = [2 * b.radius * 0.5 for s in positives for b in s.lesions]
    assert min(diameters) < 250 and max(diameters) > 1000
    # stains differ from slide to slide
    assert len({s.stain for s in planned}) == len(planned)


def test_mask_and_lesion_fraction_agree(bench: list[BenchmarkSlide]) -> None:
    for b in bench:
        mask = np.asarray(Image.open(b.mask_path)) > 127
        assert mask.shape == b.slide.mask_shape(MASK_MPP) == (96, 128)
        ds = MASK_MPP / 0.5  # level-0 pixels per mask pixel
        area = sum(blob.area() for blob in b.slide.lesions)
        assert mask.sum() * ds * ds == pytest.approx(area, rel=0.05, abs=ds * ds)
        # 256-px boxes (16 x 16 mask pixels): the mask's share against lesion_fraction
        block = TILE0 // int(ds)
        shares = mask.reshape(96 // block, block, 128 // block, block).mean(axis=(1, 3))
        for r, c in np.ndindex(shares.shape):
            truth = b.slide.lesion_fraction(c * TILE0, r * TILE0, TILE0, TILE0)
            assert abs(truth - shares[r, c]) < 0.08, (b.slide_id, r, c)
        if b.label == "positive":
            assert mask.any() and (shares >= 0.5).any()
        else:
            assert not mask.any()


def test_labels_csv_and_sidecars_are_consistent(bench: list[BenchmarkSlide]) -> None:
    folder = bench[0].path.parent
    with (folder / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["slide_id", "path", "label"]
    assert [r["slide_id"] for r in rows] == ["synthetic-000", "synthetic-001", "synthetic-002"]
    assert sorted(r["label"] for r in rows) == ["negative", "positive", "positive"]
    for row, b in zip(rows, bench, strict=True):
        assert (folder / row["path"]).resolve() == b.path.resolve() and row["label"] == b.label
        truth = json.loads(b.truth_path.read_text())
        assert truth["label"] == row["label"] and truth["slide_id"] == row["slide_id"]
        assert truth["mask"]["file"] == b.mask_path.name
        assert truth["mask"]["mpp"] == MASK_MPP and truth["mpp"] == 0.5
        assert len(truth["lesions"]) == len(b.slide.lesions)
        assert load_truth(b.truth_path) == b.slide  # the sidecar rebuilds the slide exactly
        assert truth_beside(b.path) == b.slide
    assert truth_beside(folder / "elsewhere.svs") is None


def test_openslide_opens_the_slides_with_their_resolution(bench: list[BenchmarkSlide]) -> None:
    reader = openslide.OpenSlide(str(bench[0].path))
    assert reader.dimensions == (2048, 1536)
    assert reader.level_downsamples == (1.0, 4.0, 16.0)
    assert float(reader.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert reader.properties["openslide.vendor"] == "aperio"
    label = np.asarray(reader.associated_images["label"].convert("RGB"))
    assert (label == LABEL_MARKER_RGB).all(axis=-1).any()
    ours = open_slide(bench[0].path)
    assert ours.mpp == pytest.approx(0.5)


def test_tissue_detection_finds_the_planted_tissue(bench: list[BenchmarkSlide]) -> None:
    """Stain variation, lesions and look-alikes do not disturb the saturation detector."""
    for b in bench:
        reader = open_slide(b.path)
        thumb = read_thumbnail(reader, 0.5, 8.0)
        mask = tissue_mask(thumb, TissueMethod.OTSU_SATURATION, 8.0)
        ys = (np.arange(thumb.shape[0]) + 0.5) * reader.dimensions[1] / thumb.shape[0]
        xs = (np.arange(thumb.shape[1]) + 0.5) * reader.dimensions[0] / thumb.shape[1]
        truth = b.slide.tissue_at(*np.meshgrid(xs, ys))
        assert (mask & truth).sum() / (mask | truth).sum() > 0.95


def test_lesions_show_in_the_written_level_at_2um(bench: list[BenchmarkSlide]) -> None:
    """What a model reads: the slides' own 2 µm/px level, JPEG and all. Tiles of 32 px inside
    lesions have more dark nucleus pixels than tiles of plain tissue."""
    inside, outside = [], []
    for b in bench:
        reader = openslide.OpenSlide(str(b.path))
        level = reader.read_region((0, 0), 1, reader.level_dimensions[1]).convert("RGB")
        pixels = np.asarray(level)
        for r in range(pixels.shape[0] // 32):
            for c in range(pixels.shape[1] // 32):
                x0, y0 = c * 128, r * 128
                xs, ys = x0 + np.arange(0, 129, 16), y0 + np.arange(0, 129, 16)
                if not b.slide.tissue_at(xs[None, :], ys[:, None]).all():
                    continue
                fraction = b.slide.lesion_fraction(x0, y0, 128, 128, samples=16)
                share = dark_fraction(pixels[r * 32 : r * 32 + 32, c * 32 : c * 32 + 32])
                if fraction >= 0.9:
                    inside.append(share)
                elif fraction == 0:
                    outside.append(share)
    assert len(inside) >= 20 and len(outside) >= 60
    assert auroc(np.array(inside), np.array(outside)) > 0.95


def fisher_direction(x: NDArray[np.float64], pos: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Fisher's linear discriminant of colour vectors (rows of `x`): the best linear rule."""
    within = np.cov(x[pos].T) + np.cov(x[~pos].T)
    return np.linalg.solve(within, x[pos].mean(axis=0) - x[~pos].mean(axis=0))


def fisher_aurocs(
    x: NDArray[np.float64], pos: NDArray[np.bool_], slides: NDArray[np.int64]
) -> tuple[float, float]:
    """AUROC of Fisher's rule fitted and scored on the same tiles, and fitted on the even
    slides to score the odd ones and back."""
    w = fisher_direction(x, pos)
    scores = np.empty(len(x))
    for k in (0, 1):
        test = slides % 2 == k
        scores[test] = x[test] @ fisher_direction(x[~test], pos[~test])
    return auroc(x[pos] @ w, x[~pos] @ w), auroc(scores[pos], scores[~pos])


def test_colour_cannot_find_lesions_but_structure_can() -> None:
    """Per 64-px tile at 2 µm/px on eight slides with different stains, six with lesions:
    lesion tiles (≥ 50% lesion) against normal tissue tiles (no lesion: every look-alike tile
    and 30% of the rest).

    Colour is each tile's mean optical density less its slide's median (a label-blind stain
    normalisation: without it the pooled tiles tell slides apart, not lesions). Fisher's linear
    rule on it, fitted and scored on these very tiles, stays weak, as does any one channel;
    fitted on half the slides and scored on the other half it is at chance. (A lesion is one
    spot of a slide, so even spots of plain normal tissue give in-sample AUROCs of 0.6-0.77.)
    The share of dark nucleus pixels separates lesions almost perfectly, look-alikes included."""
    rng = np.random.default_rng(0)
    colour, structure, lesion, mimic, slide_of = [], [], [], [], []
    for i, seed in enumerate(range(100, 108)):
        slide = plan_benchmark_slide(seed, positive=i < 6, width=4096, height=3072)
        for ty in range(0, slide.height - TILE0 + 1, TILE0):
            for tx in range(0, slide.width - TILE0 + 1, TILE0):
                xs, ys = tx + np.arange(0, TILE0 + 1, 32), ty + np.arange(0, TILE0 + 1, 32)
                if not slide.tissue_at(xs[None, :], ys[:, None]).all():
                    continue
                fraction = slide.lesion_fraction(tx, ty, TILE0, TILE0, samples=16)
                centre = (np.array(tx + TILE0 / 2), np.array(ty + TILE0 / 2))
                look_alike = any(m.contains(*centre) for m in slide.mimics)
                if 0 < fraction < 0.5 or (fraction == 0 and not look_alike and rng.uniform() > 0.3):
                    continue  # mixed tiles out; part of the plain normal tissue is plenty
                tile = slide.render(tx, ty, TILE0 // DS, TILE0 // DS, DS)
                colour.append(tile.reshape(-1, 3).mean(axis=0))
                structure.append(dark_fraction(tile))
                lesion.append(fraction >= 0.5)
                mimic.append(look_alike)
                slide_of.append(i)
    rgb, dark = np.array(colour), np.array(structure)
    pos, hard, slides = np.array(lesion), np.array(mimic), np.array(slide_of)
    assert pos.sum() >= 80 and (~pos).sum() >= 120 and hard.sum() >= 30
    od = -np.log(rgb / 255.0)
    for i in np.unique(slides):
        od[slides == i] -= np.median(od[slides == i], axis=0)
    in_sample, out_of_fold = fisher_aurocs(od, pos, slides)  # halves: 3 with lesions, 1 without
    raw, raw_out_of_fold = fisher_aurocs(rgb, pos, slides)
    channels = [auroc(od[pos, c], od[~pos, c]) for c in range(3)]
    darkness = auroc(od[pos].sum(axis=1), od[~pos].sum(axis=1))
    structure_auc = auroc(dark[pos], dark[~pos])
    print(
        f"{pos.sum()} lesion tiles, {(~pos).sum()} normal ({hard.sum()} look-alikes); AUROC: "
        f"colour LDA {in_sample:.3f} in sample, {out_of_fold:.3f} out of fold "
        f"(mean RGB without stain normalisation: {raw:.3f}, {raw_out_of_fold:.3f}), channels "
        f"{', '.join(f'{a:.3f}' for a in channels)}, darkness {darkness:.3f}; "
        f"dark-pixel share {structure_auc:.3f}"
    )
    assert in_sample < 0.75 and out_of_fold < 0.7 and raw_out_of_fold < 0.75
    assert all(0.4 < a < 0.6 for a in [*channels, darkness])
    assert structure_auc > 0.95
    assert auroc(dark[pos], dark[hard]) > 0.95  # look-alikes have normal structure
    # ... and a darker colour than the rest of the normal tissue, as lesions are imagined to be
    darker = od[hard].sum(axis=1).mean() - od[~pos & ~hard].sum(axis=1).mean()
    print(f"look-alikes darker by {darker:.3f} summed OD")
    assert darker > 0.07


def test_synth_command_writes_a_labelled_set(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["synth", "--out", str(tmp_path), "--n", "2", "--size", "1024x1024"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "labels.csv",
        "synthetic-000.mask.png",
        "synthetic-000.svs",
        "synthetic-000.truth.json",
        "synthetic-001.mask.png",
        "synthetic-001.svs",
        "synthetic-001.truth.json",
    ]
    assert "2 slides (1 positive)" in res.output
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path), "--size", "10x10"])
    assert bad.exit_code == 2 and "too small" in bad.output
