"""The whole lab workflow through the command line: synth → features → train → run on
held-out slides with the training folder → evaluate (slide level and lesion localisation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import slidemill


@pytest.mark.slow
def test_synth_features_train_run_evaluate(tmp_path: Path) -> None:
    def ok(*args: str | Path) -> str:
        proc = slidemill(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    train_set, test_set = tmp_path / "train-set", tmp_path / "test-set"
    ok("synth", "--out", train_set, "--n", "8", "--size", "2048x1536", "--seed", "1")
    ok("synth", "--out", test_set, "--n", "4", "--size", "2048x1536", "--seed", "2")
    feats = tmp_path / "features"
    ok(
        "features", train_set, "--out", feats, "--encoder", "tiny_cnn", "--tile-mpp", "2.0",
        "--tile-px", "64", "--workers", "2", "--no-progress",
    )  # fmt: skip
    model = tmp_path / "model"
    ok(
        "train", "--labels", train_set / "labels.csv", "--features", feats, "--folds", "2",
        "--epochs", "5", "--out", model,
    )  # fmt: skip
    training = json.loads((model / "training.json").read_text())
    assert len(training["slides"]) == 8 and len(training["folds"]) == 2
    run = tmp_path / "run"
    ok("run", test_set, "--model", model, "--out", run, "--workers", "2", "--no-progress")
    result = json.loads((run / "synthetic-000" / "result.json").read_text())
    ensemble = json.loads((model / "ensemble" / "manifest.json").read_text())
    assert result["provenance"]["model_sha256"] == training["ensemble"]["model_sha256"]
    assert ensemble["head"] == "ensemble"
    # out-of-fold evaluation of the training folder
    oof = tmp_path / "oof-report"
    ok("evaluate", "--model", model, "--out", oof, "--bootstrap", "50")
    report = json.loads((oof / "evaluation.json").read_text())
    assert [f["fold"] for f in report["folds"]] == ["fold-0", "fold-1"]
    assert report["pooled"]["n_slides"] == 8
    # held-out slides with their ground truth beside them: slide level and localisation
    held = tmp_path / "held-out-report"
    err = ok(
        "evaluate", "--model", model, "--results", run, "--labels", test_set / "labels.csv",
        "--out", held, "--bootstrap", "50",
    )  # fmt: skip
    report = json.loads((held / "evaluation.json").read_text())
    with (test_set / "labels.csv").open() as fh:
        positives = sum(row["label"] == "positive" for row in csv.DictReader(fh))
    assert report["pooled"]["n_slides"] == 4
    assert report["localisation"]["n_slides"] == positives > 0
    assert report["localisation"]["n_lesion_tiles"] > 0
    # attention scored beside the tile scores, with each positive slide's top-k share
    assert 0.0 <= report["localisation"]["attention_pooled_auroc"] <= 1.0
    assert len(report["localisation"]["attention_top_k"]) == positives
    assert "lesion localisation AUROC" in err
    for name in ("roc.png", "calibration.png", "report.html"):
        assert (held / name).stat().st_size > 0
