"""`slidemill demo`'s steps, at toy sizes: every output of every step is written, and a rerun
keeps what exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from slidemill.pipeline.demo import HEADS, DemoSettings, run_demo
from slidemill.pipeline.synth import DEGRADATIONS
from slidemill.schemas import REFERENCE_FORMAT


@pytest.mark.slow
def test_demo_writes_every_step_and_resumes(tmp_path: Path, sample_slide: Path) -> None:
    settings = DemoSettings(
        n_train=8, n_test=2, size=(2048, 1536), pretrain_steps=2, tile_mpp=2.0, tile_px=64,
        folds=2, n_degraded=1,
    )  # fmt: skip
    out = tmp_path / "demo"
    result = run_demo(out, sample_slide, settings, Console(quiet=True))
    assert set(result.held_out) == set(result.out_of_fold) == set(HEADS)
    for head in HEADS:
        assert result.out_of_fold[head].evaluation.report.pooled.n_slides == 8
        assert result.held_out[head].evaluation.report.pooled.n_slides == 2
        for report in (f"report-{head}-out-of-fold", f"report-{head}-held-out"):
            assert (out / report / "report.html").is_file()
    # the sample slide has no label: reported, not dropped
    assert result.held_out[HEADS[0]].left_out == ("CMU-1-Small-Region: no label",)
    run = out / f"run-{HEADS[0]}"
    sample_result = json.loads((run / "CMU-1-Small-Region" / "result.json").read_text())
    assert sample_result["status"] == "done"
    # the trained ensemble has a reference: every diagnosis comes with an OOD score
    assert sample_result["qc"]["reference"] == REFERENCE_FORMAT
    assert sample_result["qc"]["ood_score"] is not None
    assert {r.slide_id for r in result.diagnoses} >= {"CMU-1-Small-Region"}
    assert sorted(kind for kind, _ in result.degraded) == sorted(DEGRADATIONS)
    assert all(r.qc is not None for _, r in result.degraded)
    # the demo keeps its own early stopping, whatever `train`'s defaults are
    hyper = json.loads((out / f"model-{HEADS[0]}" / "training.json").read_text())["hyperparameters"]
    assert (hyper["min_epochs"], hyper["weight_averaging"], hyper["max_epochs"]) == (1, 0, 60)
    # every model runs the encoder pretrained here, not a fresh random one
    pretrained = json.loads((out / "encoder" / "pretrain.json").read_text())["weights_sha256"]
    assert pretrained in (out / "features" / "encoder-bundle" / "manifest.json").read_text()
    stamps = {p: (out / p).stat().st_mtime_ns for p in ("encoder/pretrain.json",
              f"model-{HEADS[0]}/training.json", f"model-{HEADS[1]}/training.json")}  # fmt: skip
    run_demo(out, sample_slide, settings, Console(quiet=True))
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps
