"""End to end through the command line and a real LocalCluster of worker processes: generated
slides, the real sample slide and every kind of bad input in one batch."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidemill.pipeline.slides import open_slide
from slidemill.pipeline.synth import LABEL_MARKER_RGB
from slidemill.pipeline.tissue import origin
from slidemill.schemas.layout import RESULT_JSON, SLIDE_MARK
from tests.helpers import StoreView, sample_path, slidemill, synthetic

BAD_STATUS = {
    "missing": ("failed", "file not found"),
    "empty": ("failed", "empty"),
    "truncated": ("failed", "truncated or corrupt"),
    "photo": ("failed", "not a"),
    "plain": ("failed", "not a"),
    "blank": ("skipped", "no tissue"),
    "nompp": ("failed", "--mpp"),
}


@pytest.fixture(scope="module")
def batch(
    tmp_path_factory: pytest.TempPathFactory,
    slides_dir: Path,
    bad_dir: dict[str, Path],
    tiny_bundle: Path,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("run")
    sample = sample_path()
    inputs: list[Path] = [slides_dir, *bad_dir.values(), *([sample] if sample else [])]
    proc = slidemill(
        "run", *inputs, "--model", tiny_bundle, "--out", out,
        "--workers", "2", "--tiles-per-task", "16", "--keep-tiles", "--no-progress",
    )  # fmt: skip
    return out, proc


def rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return {r["slide_id"]: r for r in csv.DictReader(fh)}


def test_exit_status_is_nonzero_when_a_slide_failed(
    batch: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, proc = batch
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "dashboard: http" in proc.stderr
    # the embedded scheduler's and workers' INFO chatter stays out of the user's terminal
    assert not [line for line in proc.stderr.splitlines() if line.startswith("INFO ")]


def test_every_bad_input_fails_alone_with_a_line_naming_it(
    batch: tuple[Path, subprocess.CompletedProcess[str]], bad_dir: dict[str, Path]
) -> None:
    out, _ = batch
    table = rows(out)
    for path in bad_dir.values():
        row = table[path.stem]
        status, phrase = BAD_STATUS[path.stem]
        assert row["status"] == status, row
        assert row["error"].startswith(str(path)), row
        assert phrase in row["error"]
        result = json.loads((out / path.stem / "result.json").read_text())
        assert result["status"] == status and result["error"] == row["error"]
        # nothing half-written: a failed slide's folder holds its result and nothing else
        assert sorted(p.name for p in (out / path.stem).iterdir()) == [SLIDE_MARK, RESULT_JSON]
    assert not (out / ".partial").exists()


def test_good_slides_write_every_output(
    batch: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = batch
    table = rows(out)
    expected = ["synth-svs", "synth-tiff"] + (["CMU-1-Small-Region"] if sample_path() else [])
    for sid in expected:
        row = table[sid]
        assert row["status"] == "done", row
        assert row["label"] in ("negative", "positive")
        p = float(row["prob_negative"]) + float(row["prob_positive"])
        assert p == pytest.approx(1.0, abs=1e-4)
        folder = out / sid
        result = json.loads((folder / "result.json").read_text())
        assert result["n_tiles"] == int(row["n_tiles"]) > 0
        assert len(result["file_sha256"]) == 64
        assert result["provenance"]["tiling"]["mpp"] == 2.0
        root = StoreView(folder / "slide.zarr")
        n = result["n_tiles"]
        assert root["coords"].shape == (n, 2)
        assert root["tiles"].shape == (n, 64, 64, 3)
        assert root["features"].shape == (n, 32)
        assert root["attention"].shape == (n,)
        assert root["scores"].shape == (n, 2)
        attrs = root.attrs
        rows_, cols_ = attrs["grid_shape"]
        assert root["heatmap"].shape == (2, rows_, cols_)
        att = root["attention"][...]
        assert att.sum() == pytest.approx(1.0, abs=1e-4)
        heat = root["heatmap"][...]
        gi = root["grid_index"][...]
        scores = root["scores"][...]
        np.testing.assert_array_equal(heat[:, gi[:, 0], gi[:, 1]], scores.T)
        assert np.isnan(heat).sum() == 2 * (rows_ * cols_ - n)  # NaN off tissue
        coords = root["coords"][...]
        stride = attrs["stride_level0"]
        np.testing.assert_array_equal(coords[:, 0], origin(gi[:, 1].astype(np.int64), stride))
        np.testing.assert_array_equal(coords[:, 1], origin(gi[:, 0].astype(np.int64), stride))
        assert np.abs(root["features"][...]).sum() > 0
        png = Image.open(folder / "heatmap.png")
        assert png.size[0] > 300


def test_tiles_are_the_slide_at_the_target_resolution(
    batch: tuple[Path, subprocess.CompletedProcess[str]], slides_dir: Path
) -> None:
    out, _ = batch
    root = StoreView(out / "synth-svs" / "slide.zarr")
    # 2 µm/px from a 0.5 µm/px slide with levels (1, 4): level 1 is exactly 2 µm/px, no resize
    assert root.attrs["provenance"]["level"] == 1
    reader = open_slide(slides_dir / "synth-svs.svs")
    coords, tiles = root["coords"][...], root["tiles"][...]
    for i in range(0, len(coords), 7):
        x, y = map(int, coords[i])
        np.testing.assert_array_equal(tiles[i], reader.read_region((x, y), 1, (64, 64)))


def test_kept_tiles_are_those_with_enough_planted_tissue(
    batch: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Each grid cell's true tissue fraction (sampled from the slide's geometry) against the
    filter's 25%: kept cells must have it, dropped cells must not, up to the error of a mask
    at 8 µm/px on a 256-px (128 µm) tile."""
    out, _ = batch
    slide = synthetic()
    root = StoreView(out / "synth-tiff" / "slide.zarr")
    kept = set(map(tuple, root["grid_index"][...].tolist()))
    n_rows, n_cols = root.attrs["grid_shape"]
    offsets = (np.arange(16) + 0.5) * 16  # 16 × 16 samples over a 256-px cell
    for r in range(n_rows):
        for c in range(n_cols):
            x, y = np.meshgrid(c * 256 + offsets, r * 256 + offsets)
            truth = slide.tissue_at(x, y).mean()
            if (r, c) in kept:
                assert truth >= 0.15, (r, c, truth)
            else:
                assert truth <= 0.35, (r, c, truth)
    assert len(kept) > 20


def test_label_images_never_reach_an_output(
    batch: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """The generated SVS carries a label image of pure green squares; no output has them."""
    out, _ = batch

    def green(img: np.ndarray) -> int:
        img = img.reshape(-1, img.shape[-1])[:, :3].astype(int)
        return int((np.abs(img - np.array(LABEL_MARKER_RGB)).max(axis=1) < 40).sum())

    for folder in (out / "synth-svs", out / "synth-tiff"):
        root = StoreView(folder / "slide.zarr")
        assert green(root["tiles"][...]) == 0
        assert green(root["thumbnail"][...]) == 0
        assert green(np.asarray(Image.open(folder / "heatmap.png").convert("RGB"))) == 0
        assert "label" not in (folder / "result.json").read_text().replace('"label": ', "")


def test_fallback_mpp_and_rerun_replace_the_failed_result(
    batch: tuple[Path, subprocess.CompletedProcess[str]],
    bad_dir: dict[str, Path],
    tiny_bundle: Path,
) -> None:
    out, _ = batch
    proc = slidemill(
        "run", bad_dir["no_mpp"], "--model", tiny_bundle, "--out", out, "--mpp", "0.5",
        "--workers", "1", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "nompp" / "result.json").read_text())
    assert result["status"] == "done"
    assert result["provenance"]["mpp_source"] == "fallback"
    assert (out / "nompp" / "slide.zarr").is_dir()
