"""`slidemill demo`'s steps, at toy sizes: every output of every step is written, and a rerun
keeps what exists."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from pipeline._demo import DemoSettings, run_demo


def test_demo_writes_every_step_and_resumes(tmp_path: Path, sample_slide: Path) -> None:
    settings = DemoSettings(
        n_train=8, n_test=2, size=(2048, 1536), encoder="tiny_cnn", tile_mpp=2.0, tile_px=64,
        folds=2,
    )  # fmt: skip
    out = tmp_path / "demo"
    oof, held = run_demo(out, sample_slide, settings, Console(quiet=True))
    assert oof.evaluation.report.pooled.n_slides == 8
    assert held.evaluation.report.pooled.n_slides == 2  # the sample slide has no label
    assert held.left_out == ("CMU-1-Small-Region: no label",)  # reported, not dropped
    sample_result = json.loads((out / "run" / "CMU-1-Small-Region" / "result.json").read_text())
    assert sample_result["status"] == "done"
    for report in ("report-out-of-fold", "report-held-out"):
        assert (out / report / "report.html").is_file()
    training = (out / "model" / "training.json").stat().st_mtime_ns
    run_demo(out, sample_slide, settings, Console(quiet=True))
    assert (out / "model" / "training.json").stat().st_mtime_ns == training
