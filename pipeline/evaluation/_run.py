"""`slidemill evaluate`: the I/O shell around `pipeline._evaluate`.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidemill.pipeline.evaluation._evaluate import (
    Evaluation,
    EvaluationError,
    FoldPredictions,
    LocalisationResult,
    evaluate,
    localisation_auroc,
    render_report,
)
from slidemill.pipeline.graph import read_all, read_attrs
from slidemill.schemas import SlideResult
from slidemill.workers import manifest_sha256, read_manifest, resolve_model_dir

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
    training = json.loads((model_dir / "training.json").read_text())
    class_names = tuple(training["class_names"])
    index = {c: i for i, c in enumerate(class_names)}
    rows: dict[int, list[dict[str, str]]] = {}
    with (model_dir / "oof_predictions.csv").open(newline="") as fh:
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


def read_labels(path: Path) -> dict[str, str]:
    """Labels CSV → {key: label}, keyed by slide_id, absolute path and file stem."""
    out: dict[str, str] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "label" not in reader.fieldnames:
            raise EvaluationError(f"{path}: needs a 'label' column")
        for row in reader:
            label = row["label"].strip()
            for key in (row.get("slide_id"), row.get("path")):
                if key:
                    out[key.strip()] = label
            if row.get("path"):
                out.setdefault(Path(row["path"]).stem, label)
    return out


def held_out_fold(
    run_dirs: Sequence[Path], labels: dict[str, str], class_names: tuple[str, ...]
) -> tuple[FoldPredictions, list[tuple[Path, SlideResult, str]], list[str]]:
    """Done results of `slidemill run` folders that have a label, as one fold; also returns the
    (folder, result, label) of each slide used and a line per slide left out (no label, or not
    done)."""
    index = {c: i for i, c in enumerate(class_names)}
    used: list[tuple[Path, SlideResult, str]] = []
    left_out: list[str] = []
    for run_dir in run_dirs:
        for result_file in sorted(run_dir.glob("*/result.json")):
            result = SlideResult.model_validate_json(result_file.read_bytes())
            label = (
                labels.get(result.slide_id)
                or labels.get(result.path)
                or labels.get(Path(result.path).stem)
            )
            if result.status != "done":
                left_out.append(f"{result.slide_id}: {result.status} ({result.error})")
            elif label is None:
                left_out.append(f"{result.slide_id}: no label")
            elif label not in index:
                raise EvaluationError(f"{result.slide_id}: label {label!r} is not a model class")
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


def tile_lesion_fractions(folder: Path, fraction: LesionFraction) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile scores of the last class and per-tile lesion fractions of one slide's outputs."""
    store = folder / "slide.zarr"
    coords = np.asarray(read_all(store, "coords"))
    scores = np.asarray(read_all(store, "scores"))[:, -1]
    size = read_attrs(store).tile_size_level0
    fractions = np.array([fraction(float(x), float(y), size, size) for x, y in coords])
    return scores, fractions


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
        fold, used, left_out = held_out_fold(results, read_labels(labels), manifest.class_names)
        folds, class_names, model_sha = [fold], manifest.class_names, manifest_sha256(manifest)
        positive = class_names[-1]
        tiles = {}
        for folder, r, label in used:
            fraction = truth(r.path) if truth is not None else None
            if fraction is not None and label == positive:
                tiles[r.slide_id] = tile_lesion_fractions(folder, fraction)
        if tiles:
            localisation = localisation_auroc(tiles)
    elif (model / "training.json").is_file():
        folds, class_names, model_sha = training_folds(model)
    else:
        raise EvaluationError(
            f"{model}: not a training folder; give held-out run outputs with --results"
        )
    evaluation = evaluate(
        folds, class_names, model_sha, localisation=localisation, bootstrap_resamples=bootstrap
    )
    out.mkdir(parents=True, exist_ok=True)
    files = render_report(evaluation.report, evaluation.roc_curves, evaluation.calibration, out)
    return EvaluationRun(evaluation, files, tuple(left_out))
