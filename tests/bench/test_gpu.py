"""`slidemill bench-gpu` runs its CPU path end to end where no GPU is (no timing assertions)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from slidemill.bench import run_bench_gpu


def test_bench_gpu_runs_its_cpu_path_and_says_so(sample_slide: Path, tmp_path: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    run_bench_gpu(sample_slide, None, 0.05, console, workdir=tmp_path, encoders=(("tiny_cnn", 64),))
    text = buf.getvalue()
    assert "no GPU here: the CPU path of the same script" in text
    assert "a LocalCluster of one worker" in text
    # the device decode path ran in the pipeline (torchvision on the CPU), and agrees exactly
    assert "tiny_cnn, device decode (decoded: cpu): in-pipeline / alone = " in text
    assert "tiny_cnn, cpu decode (decoded: cpu): in-pipeline / alone = " in text
    assert "max pixel difference 0" in text
    assert "GPU utilisation not sampled" in text
