"""`slidemill evaluate` on held-out run outputs: labels are read and matched by the one labels
reader training uses, so a slide labelled twice with different labels is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.evaluation import run_evaluation
from slidemill.schemas import Provenance, SlideResult
from slidemill.workers import LabelError, init_bundle

CLASSES = ("neg", "pos")


def write_run(root: Path) -> tuple[Path, Path]:
    """A model bundle and a `slidemill run` output folder: four done slides, one failed."""
    model = root / "model"
    init_bundle(
        model,
        encoder="tiny_cnn",
        encoder_kwargs={"width": 8},
        head="mean_pool",
        class_names=CLASSES,
        mpp=2.0,
        tile_px=32,
    )
    run = root / "run"
    scores = {"a": 0.1, "b": 0.3, "c": 0.7, "d": 0.9, "unlabelled": 0.5}
    for sid, p in scores.items():
        result = SlideResult(
            slide_id=sid,
            path=str(root / "slides" / f"{sid}.svs"),
            status="done",
            class_names=CLASSES,
            probabilities=(1.0 - p, p),
            label=CLASSES[int(p > 0.5)],
            n_tiles=4,
            provenance=Provenance(slidemill_version="test"),
        )
        (run / sid).mkdir(parents=True)
        (run / sid / "result.json").write_text(result.model_dump_json())
    failed = SlideResult(
        slide_id="broken",
        path=str(root / "slides" / "broken.svs"),
        status="failed",
        error="broken.svs: truncated",
        provenance=Provenance(slidemill_version="test"),
    )
    (run / "broken").mkdir()
    (run / "broken" / "result.json").write_text(failed.model_dump_json())
    return model, run


def write_labels(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "path", "label"])
        writer.writerows(rows)
    return path


def test_held_out_labels_match_by_slide_id_path_and_stem(tmp_path: Path) -> None:
    model, run = write_run(tmp_path)
    labels = write_labels(
        tmp_path / "labels.csv",
        [
            ["a", "", "neg"],  # slide_id
            ["", "slides/b.svs", "neg"],  # path, relative to the CSV's folder
            ["", "/elsewhere/c.svs", "pos"],  # stem
            ["d", "", "pos"],
            ["d", "", "pos"],  # a repeat with the same label is only a duplicate
            ["broken", "", "pos"],
            ["ghost", "", "neg"],  # labels for slides not in the run are fine
        ],
    )
    done = run_evaluation(tmp_path / "eval", model=model, labels=labels, results=(run,))
    pooled = done.evaluation.report.pooled
    assert pooled.n_slides == 4 and pooled.n_slides_per_class == (2, 2)
    assert pooled.auroc == 1.0
    assert sorted(done.left_out) == [
        "broken: failed (broken.svs: truncated)",
        "unlabelled: no label",
    ]


def test_a_slide_labelled_twice_with_different_labels_is_refused(tmp_path: Path) -> None:
    model, run = write_run(tmp_path)
    rows = [["a", "", "neg"], ["b", "", "neg"], ["c", "", "pos"], ["b", "", "pos"]]
    labels = write_labels(tmp_path / "labels.csv", rows)
    with pytest.raises(LabelError) as caught:
        run_evaluation(tmp_path / "eval", model=model, labels=labels, results=(run,))
    message = str(caught.value)
    assert message == "slide b is labelled 'neg' on line 3 and 'pos' on line 5"
    assert not (tmp_path / "eval").exists()

    args = ["evaluate", "--model", str(model), "--out", str(tmp_path / "cli")]
    res = CliRunner().invoke(app, [*args, "--results", str(run), "--labels", str(labels)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if "slide b" in line]
    assert len(lines) == 1 and lines[0].endswith(message), res.output  # one line, the whole message
