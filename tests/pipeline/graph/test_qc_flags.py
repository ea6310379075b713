"""QC and distribution shift through `slidemill run`: a bundle with a training reference flags
slides beyond it, ink is flagged and its tiles excluded, and --fail-on-flags makes a flagged
slide fail the exit status; results.csv, result.json and the heatmap carry the flags."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from slidemill.pipeline.synth import degraded_copy, write_slide
from slidemill.schemas import REFERENCE_FORMAT, SlideResult
from slidemill.workers import fit_reference, load_bundle, save_bundle
from tests.helpers import StoreView, slidemill, synthetic

THRESHOLD = 1e-3
"""Far below any slide's score: every slide is out of distribution for this bundle."""


@pytest.fixture(scope="module")
def flagged_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("qcrun")
    model = load_bundle(tiny_bundle, torch.device("cpu"))
    dim = model.manifest.feature_dim
    reference = fit_reference([np.random.default_rng(0).normal(size=(64, dim))])
    fields = {
        **model.manifest.model_dump(exclude={"format_version"}),
        "reference": {"format": REFERENCE_FORMAT, "shrinkage": 0.1, "threshold": THRESHOLD,
                      "threshold_rule": "a test's"},
        "calibration": {"temperature": 2.0, "n_slides": 8, "nll_before": 0.5, "nll_after": 0.4},
    }  # fmt: skip
    bundle = root / "bundle"
    save_bundle(bundle, model.encoder, model.head, fields, reference=reference)
    slides = root / "slides"
    slides.mkdir()
    clean = write_slide(slides / "clean.svs", synthetic())
    degraded_copy(clean, "pen", slides)
    out = root / "out"
    proc = slidemill(
        "run", slides, "--model", bundle, "--out", out, "--workers", "1", "--no-progress",
        "--qc", "exclude", "--fail-on-flags",
    )  # fmt: skip
    return out, proc


def test_a_flagged_slide_fails_the_exit_status_but_keeps_its_label(
    flagged_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = flagged_run
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 slide(s) flagged by QC" in proc.stdout + proc.stderr
    with (out / "results.csv").open() as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert {r["status"] for r in rows.values()} == {"done"}
    assert all(r["label"] for r in rows.values())
    assert rows["clean"]["flags"] == "out_of_distribution"
    assert rows["clean-pen"]["flags"].split(";")[:2] == ["out_of_distribution", "pen_marks"]


def test_result_json_says_why(flagged_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = flagged_run
    clean = SlideResult.model_validate_json((out / "clean" / "result.json").read_bytes())
    pen = SlideResult.model_validate_json((out / "clean-pen" / "result.json").read_bytes())
    assert clean.qc is not None and pen.qc is not None
    assert clean.qc.reference == REFERENCE_FORMAT
    assert clean.qc.ood_score is not None and clean.qc.ood_score > THRESHOLD
    assert clean.qc.temperature == 2.0
    assert clean.qc.mode == "exclude" and clean.qc.excluded_tiles == 0
    assert clean.qc.n_usable == clean.qc.n_tiles == clean.n_tiles
    # the inked tiles were left out of the MIL head (no attention), still scored for the map
    assert 0 < pen.qc.excluded_tiles < pen.n_tiles
    store = StoreView(out / "clean-pen" / "slide.zarr")
    pen_share = store["qc_pen"]
    left_out = pen_share > 0.05
    assert left_out.sum() == pen.qc.excluded_tiles
    assert np.all(store["attention"][left_out] == 0)
    assert np.isfinite(store["scores"]).all()
    assert all(len(f.reason.splitlines()) == 1 for f in pen.qc.flags)
    doc = json.loads((out / "clean-pen" / "result.json").read_text())
    assert [f["code"] for f in doc["qc"]["flags"]][:2] == ["out_of_distribution", "pen_marks"]
    # calibrated: T = 2 pulls the probabilities toward 1/2
    assert max(clean.probabilities) < 1.0


def test_the_heatmap_shows_the_flags(
    flagged_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    from PIL import Image

    out, _ = flagged_run
    png = np.asarray(Image.open(out / "clean-pen" / "heatmap.png").convert("RGB")).astype(int)
    # crimson flag text under the title (nothing else on the figure is that red)
    red = (png[..., 0] > 180) & (png[..., 1] < 60) & (png[..., 2] < 90)
    assert red[: png.shape[0] // 3].sum() > 50
