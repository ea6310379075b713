"""`slidemill evaluate`: the I/O shell around `evaluate` and `render_report`.

Two sources of predictions, both scored against labels the model did not train on:
- a `slidemill train` folder: its out-of-fold predictions, one test fold per CV fold;
- `slidemill run` output folders on held-out slides, with a labels CSV: one fold, "held-out".
With ground truth beside the slides (`slidemill synth` writes it), the tile heatmaps of positive
slides are also scored against the lesion masks.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slidemill.pipeline.evaluation._evaluate import Evaluation, FoldPredictions, evaluate
from slidemill.pipeline.evaluation._html import render_report
from slidemill.pipeline.graph import read_all, read_attrs
from slidemill.schemas import SlideResult, TemperatureScaling
from slidemill.schemas.layout import OOF_CSV, RESULT_JSON, SLIDE_STORE, TRAINING_JSON, StoreArray
from slidemill.workers import manifest_sha256, read_manifest, resolve_model_dir
from slidemill.workers.metrics import (
    EvaluationError,
    LocalisationResult,
    apply_temperature,
    attention_localisation,
)
from slidemill.workers.training import LabelRow, match_labels, read_label_csv

# lesion fraction of a level-0 box (x, y, width, height) of one slide, from its ground truth
LesionFraction = Callable[[float, float, float, float], float]


@dataclass(frozen=True, slots=True)
class EvaluationRun:
    """What `run_evaluation` wrote."""

    evaluation: Evaluation
    """The report and curves."""
    files: dict[str, Path]
    """Name → path of each file written."""
    left_out: tuple[str, ...] = ()
    """A line per held-out result not scored (no label, or not done)."""


def training_folds(model_dir: Path) -> tuple[list[FoldPredictions], tuple[str, ...], str]:
    """The out-of-fold predictions of a training folder, its class names and ensemble id."""
    training = json.loads((model_dir / TRAINING_JSON).read_text())
    class_names = tuple(training["class_names"])
    index = {c: i for i, c in enumerate(class_names)}
    rows: dict[int, list[dict[str, str]]] = {}
    with (model_dir / OOF_CSV).open(newline="") as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(int(row["fold"]), []).append(row)
    by_fold = {f["fold"]: f for f in training["folds"]}
    folds = [
        FoldPredictions(
            name=f"fold-{k}",
            slide_ids=tuple(r["slide_id"] for r in fold_rows),
            y_true=np.array([index[r["label"]] for r in fold_rows]),
            probabilities=np.array(
                [[float(r[f"prob_{c}"]) for c in class_names] for r in fold_rows]
            ),
            threshold=by_fold[k]["threshold"],
            model_sha256=by_fold[k]["model_sha256"],
        )
        for k, fold_rows in sorted(rows.items())
    ]
    return folds, class_names, training["ensemble"]["model_sha256"]


@dataclass(frozen=True, slots=True)
class _RunSlide:
    """A slide of the run outputs, as label matching sees it."""

    path: str
    """The slide file's path, from its `result.json`."""
    reason: str | None
    """Why it cannot be scored (not done); None when it can."""


def held_out_fold(
    run_dirs: Sequence[Path],
    rows: Sequence[LabelRow],
    class_names: tuple[str, ...],
    *,
    base: Path | None = None,
) -> tuple[FoldPredictions, list[tuple[Path, SlideResult, str]], list[str]]:
    """Done results of `slidemill run` folders that have a label, as one fold; also returns the
    (folder, result, label) of each slide used and a line per slide left out (no label, or not
    done).

    Labels come from `rows` (`read_label_csv`) matched as training matches them
    (`match_labels`: slide id, then path, a relative one from `base`, then stem); a slide given
    two different labels is a `LabelError` naming it and both lines."""
    index = {c: i for i, c in enumerate(class_names)}
    found: dict[str, tuple[Path, SlideResult]] = {}
    for run_dir in run_dirs:
        for result_file in sorted(run_dir.glob(f"*/{RESULT_JSON}")):
            result = SlideResult.model_validate_json(result_file.read_bytes())
            if result.slide_id in found:
                raise EvaluationError(
                    f"slide {result.slide_id} has results in both {found[result.slide_id][0]} "
                    f"and {result_file}; give each held-out slide once"
                )
            found[result.slide_id] = (result_file, result)
    slides = {
        sid: _RunSlide(r.path, None if r.status == "done" else f"status {r.status}")
        for sid, (_, r) in found.items()
    }
    labels = match_labels(rows, slides, classes=class_names, base=base).labels
    used: list[tuple[Path, SlideResult, str]] = []
    left_out: list[str] = []
    for sid, (result_file, result) in found.items():
        label = labels.get(sid)
        if result.status != "done":
            left_out.append(f"{sid}: {result.status} ({result.error})")
        elif label is None:
            left_out.append(f"{sid}: no label")
        elif result.class_names != class_names:
            raise EvaluationError(
                f"{result_file}: classes {result.class_names} are not the model's {class_names}"
            )
        else:
            used.append((result_file.parent, result, label))
    if not used:
        raise EvaluationError("no done, labelled slides in " + ", ".join(map(str, run_dirs)))
    fold = FoldPredictions(
        name="held-out",
        slide_ids=tuple(r.slide_id for _, r, _ in used),
        y_true=np.array([index[label] for _, _, label in used]),
        probabilities=np.array([r.probabilities for _, r, _ in used]),
    )
    return fold, used, left_out


def synth_truth(path: str) -> LesionFraction | None:
    """The lesion-fraction function of a slide made by `slidemill synth` (from the
    `<stem>.truth.json` beside it), or None for any other slide."""
    from slidemill.pipeline.synth import truth_beside

    slide = truth_beside(Path(path))
    return slide.lesion_fraction if slide is not None else None


def tile_lesion_fractions(
    folder: Path, fraction: LesionFraction
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile scores of the last class, attention weights and lesion fractions of one slide's
    outputs."""
    store = folder / SLIDE_STORE
    coords = np.asarray(read_all(store, StoreArray.COORDS))
    scores = np.asarray(read_all(store, StoreArray.SCORES))[:, -1]
    attention = np.asarray(read_all(store, StoreArray.ATTENTION)).reshape(-1)
    size = read_attrs(store).tile_size_level0
    fractions = np.array([fraction(float(x), float(y), size, size) for x, y in coords])
    return scores, attention, fractions


def run_evaluation(
    out: Path,
    *,
    model: Path,
    labels: Path | None = None,
    results: Sequence[Path] = (),
    truth: Callable[[str], LesionFraction | None] | None = None,
    bootstrap: int = 1000,
) -> EvaluationRun:
    """Evaluate a training folder's out-of-fold predictions, or (with `results` and `labels`)
    held-out run outputs; write evaluation.json, roc.png, calibration.png and report.html.

    `truth(path)` gives the lesion-fraction function of a slide file, or None without ground
    truth; positive held-out slides with it are scored for lesion localisation."""
    model_dir = resolve_model_dir(model)
    localisation: LocalisationResult | None = None
    left_out: list[str] = []
    if results:
        if labels is None:
            raise EvaluationError("held-out results need --labels")
        manifest = read_manifest(model_dir)
        rows = read_label_csv(labels)
        fold, used, left_out = held_out_fold(
            results, rows, manifest.class_names, base=labels.parent
        )
        folds, class_names, model_sha = [fold], manifest.class_names, manifest_sha256(manifest)
        positive = class_names[-1]
        tiles = {}
        for folder, r, label in used:
            fraction = truth(r.path) if truth is not None else None
            if fraction is not None and label == positive:
                tiles[r.slide_id] = tile_lesion_fractions(folder, fraction)
        if tiles:
            localisation = attention_localisation(tiles)
    elif (model / TRAINING_JSON).is_file():
        folds, class_names, model_sha = training_folds(model)
    else:
        raise EvaluationError(
            f"{model}: not a training folder; give held-out run outputs with --results"
        )
    calibration = read_manifest(model_dir).calibration
    before = None
    if calibration is not None:
        t = calibration.temperature
        if not results:  # out-of-fold predictions are the heads' own: calibrate them
            before, folds = folds, [_with_temperature(f, t) for f in folds]
        else:  # runs report calibrated probabilities: undo it for the figures before
            before = [_with_temperature(f, 1.0 / t) for f in folds]
    evaluation = evaluate(
        folds, class_names, model_sha, localisation=localisation, bootstrap_resamples=bootstrap
    )
    before_curve = None
    if before is not None and calibration is not None:
        was = evaluate(before, class_names, model_sha, bootstrap_resamples=0)
        before_curve = was.calibration
        now, then = evaluation.report.pooled, was.report.pooled
        scaling = TemperatureScaling(
            temperature=calibration.temperature,
            ece_before=then.ece,
            ece_after=now.ece,
            brier_before=then.brier,
            brier_after=now.brier,
            auroc_before=then.auroc,
            auroc_after=now.auroc,
        )
        report = evaluation.report.model_copy(update={"temperature_scaling": scaling})
        evaluation = replace(evaluation, report=report)
    out.mkdir(parents=True, exist_ok=True)
    files = render_report(
        evaluation.report, evaluation.roc_curves, evaluation.calibration, out, before_curve
    )
    return EvaluationRun(evaluation, files, tuple(left_out))


def _with_temperature(fold: FoldPredictions, temperature: float) -> FoldPredictions:
    """A fold's predictions with logits divided by `temperature`; a two-class threshold moves
    with them, so every slide keeps its predicted class."""
    threshold = fold.threshold
    if threshold is not None and fold.probabilities.shape[1] == 2:
        threshold = float(apply_temperature([1.0 - threshold, threshold], temperature)[1])
    return replace(
        fold,
        probabilities=apply_temperature(fold.probabilities, temperature),
        threshold=threshold,
    )
