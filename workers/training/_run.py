"""The training run: a features folder and a labels CSV in; one model bundle per fold, the
`ensemble` bundle of all folds, `training.json` and `oof_predictions.csv` out."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slidemill.schemas import REFERENCE_FORMAT, slidemill_version
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import (
    ENSEMBLE_DIR,
    FEDERATED_MODEL_DIR,
    FEDERATION_JSON,
    MANIFEST_JSON,
    OOF_CSV,
    TRAINING_JSON,
)
from slidemill.workers.errors import TrainingError
from slidemill.workers.metrics import TemperatureFit, fit_temperature
from slidemill.workers.models import (
    ENSEMBLE,
    REFERENCE_SHRINKAGE,
    ReferenceStats,
    ensemble_of,
    fit_reference,
    load_bundle,
    manifest_sha256,
    member_kwargs_json,
    ood_score,
    save_bundle,
)
from slidemill.workers.training._config import CrossValidation, EpochReport, TrainConfig
from slidemill.workers.training._features import FeatureBags, FeatureFolder, scan_features
from slidemill.workers.training._labels import LabelMatch, match_labels, read_label_csv
from slidemill.workers.training._loop import cross_validate
from slidemill.workers.training._select import SelectionRecord


@dataclass(frozen=True, slots=True, eq=False)
class TrainingReport:
    """What `train_from_features` wrote and measured."""

    out: Path
    """The training folder."""
    fold_dirs: tuple[Path, ...]
    """`out/fold-<k>` bundles."""
    fold_sha256: tuple[str, ...]
    """Their bundle ids."""
    ensemble_dir: Path
    """`out/ensemble`, the bundle of all folds."""
    ensemble_sha256: str
    """Its bundle id."""
    ensemble_threshold: float | None
    """Its decision threshold (the mean of the folds'), None when a fold has none."""
    training_json: Path
    """`out/training.json`."""
    oof_csv: Path
    """`out/oof_predictions.csv`."""
    labels: LabelMatch
    """How the labels matched the features."""
    cv: CrossValidation
    """Folds, histories and held-out predictions."""
    seconds: float
    """Wall time of the whole run."""
    ood_threshold: float | None = None
    """The bundles' OOD flag threshold (None: too few held-out slides to set one)."""
    heldout_ood_scores: tuple[float, ...] = ()
    """OOD scores of each fold's held-out slides against that fold's reference."""
    temperature: TemperatureFit | None = None
    """Temperature scaling fitted on the out-of-fold predictions."""


OOD_PERCENTILE = 99.0
"""The OOD threshold: this percentile of the held-out slides' scores over the folds."""


@dataclass(frozen=True, slots=True, eq=False)
class TrustFit:
    """The references and calibration `slidemill train` stores in its bundles."""

    fold_references: tuple[ReferenceStats, ...]
    """Each fold's reference, fitted on its training and validation slides."""
    reference: ReferenceStats
    """The ensemble's, fitted on every slide."""
    heldout_scores: tuple[float, ...]
    """Each fold's held-out slides scored against its reference."""
    threshold: float
    """`OOD_PERCENTILE` of `heldout_scores`."""
    temperature: TemperatureFit
    """Fitted on the out-of-fold predictions."""

    def reference_entry(self) -> dict[str, object]:
        """The manifest's `reference`, less what `save_bundle` fills in from the file."""
        return {
            "format": REFERENCE_FORMAT,
            "shrinkage": REFERENCE_SHRINKAGE,
            "threshold": self.threshold,
            "threshold_rule": f"{OOD_PERCENTILE:g}th percentile of {len(self.heldout_scores)} "
            "held-out slides' scores over the training folds",
        }

    def calibration_entry(self) -> dict[str, object]:
        """The manifest's `calibration`."""
        t = self.temperature
        return {
            "temperature": t.temperature,
            "n_slides": len(self.heldout_scores),
            "nll_before": t.nll_before,
            "nll_after": t.nll_after,
        }


def fit_trust(bags: FeatureBags, cv: CrossValidation) -> TrustFit:
    """Fit each fold's feature reference on its training and validation slides and score its
    held-out slides, so the OOD threshold is set on slides the reference never saw; fit the
    ensemble's on every slide, and the temperature on the out-of-fold predictions."""
    references, scores = [], []
    for fold in cv.folds:
        ref = fit_reference([bags[sid] for sid in (*fold.train_ids, *fold.val_ids)])
        references.append(ref)
        scores += [ood_score(ref, bags[sid]) for sid in fold.test_ids if len(bags[sid])]
    if not scores:
        raise TrainingError("no held-out slide with tiles to set the OOD threshold on")
    threshold = float(np.percentile(scores, OOD_PERCENTILE))
    return TrustFit(
        fold_references=tuple(references),
        reference=fit_reference([bags[sid] for sid in cv.slide_ids]),
        heldout_scores=tuple(scores),
        threshold=threshold,
        temperature=fit_temperature(cv.y, cv.oof_probabilities),
    )


def resolve_model_dir(path: Path) -> Path:
    """`path/ensemble` when `path` is a training folder (`training.json` and
    `ensemble/manifest.json`), `path/model` when it is a federated one (`federation.json` and
    `model/manifest.json`), else `path`: `--model` accepts any of them."""
    path = Path(path)
    if (path / TRAINING_JSON).is_file() and (path / ENSEMBLE_DIR / MANIFEST_JSON).is_file():
        return path / ENSEMBLE_DIR
    if (path / FEDERATION_JSON).is_file() and (
        path / FEDERATED_MODEL_DIR / MANIFEST_JSON
    ).is_file():
        return path / FEDERATED_MODEL_DIR
    return path


def _oof_csv(cv: CrossValidation) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "fold", "label", *(f"prob_{c}" for c in cv.class_names)])
    order = sorted(range(len(cv.slide_ids)), key=lambda i: (int(cv.fold_of[i]), cv.slide_ids[i]))
    for i in order:
        writer.writerow(
            [
                cv.slide_ids[i],
                int(cv.fold_of[i]),
                cv.class_names[int(cv.y[i])],
                *(repr(float(p)) for p in cv.oof_probabilities[i]),
            ]
        )
    return buffer.getvalue()


def train_from_features(
    labels_csv: Path,
    features_dir: Path,
    out: Path,
    config: TrainConfig,
    *,
    classes: Sequence[str] | None = None,
    on_labels: Callable[[LabelMatch], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    cache_bytes: int = 8 << 30,
    selection: SelectionRecord | None = None,
) -> TrainingReport:
    """Cross-validate a head on a features folder and write the training folder `out`:

        fold-<k>/              a bundle per fold: the features' encoder + that fold's head,
                               with its validation threshold (two classes)
        ensemble/              a bundle whose `ensemble` head averages the fold heads
        training.json          per-fold metrics, fold of every slide, labels summary, settings
        oof_predictions.csv    slide_id, fold, label, prob_<class>...: held-out predictions

    `on_labels` sees the label matching (with its warnings) before training starts; `on_epoch`
    every epoch of every fold. `selection` (from `select_and_train`) goes into `training.json` and
    the bundles' descriptions. `training.json` is written last: its presence marks a complete
    folder. Raises `TrainingError` / `LabelError` (a `WorkerError`) on bad input.
    """
    started = time.perf_counter()
    labels_csv, features_dir, out = Path(labels_csv), Path(features_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"{out}: exists and is not empty; choose a new folder")
    folder = scan_features(features_dir)
    match = match_labels(
        read_label_csv(labels_csv), folder.slides, classes=classes, base=labels_csv.parent
    )
    if on_labels is not None:
        on_labels(match)
    index = {name: i for i, name in enumerate(match.class_names)}
    labels = {sid: index[label] for sid, label in match.labels.items()}
    bags = FeatureBags({sid: folder.slides[sid].store for sid in labels}, cache_bytes)
    cv = cross_validate(bags, labels, match.class_names, config, on_epoch=on_epoch)
    trust = fit_trust(bags, cv)
    trust_fields: dict[str, object] = {"calibration": trust.calibration_entry()}

    encoder_model = load_bundle(folder.encoder_bundle, torch.device("cpu"))
    enc = encoder_model.manifest
    base: dict[str, object] = {
        "encoder": enc.encoder,
        "encoder_kwargs": dict(enc.encoder_kwargs),
        "feature_dim": enc.feature_dim,
        "normalisation": enc.normalisation.model_dump(),
        "input_mpp": enc.input_mpp,
        "tile_px": enc.tile_px,
        "class_names": match.class_names,
        "weights_sha256": "0" * 64,
        # where the encoder's published weights came from, carried into every bundle made here
        **{
            k: v
            for k in ("encoder_preset", "encoder_weights_sha256", "encoder_weights_source")
            if (v := getattr(enc, k)) is not None
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    chosen = "" if selection is None else f". {selection.summary}"
    fold_dirs, fold_sha = [], []
    k_total = config.n_folds
    for result, fold_reference in zip(cv.folds, trust.fold_references, strict=True):
        auc = "undefined" if result.test_auroc is None else f"{result.test_auroc:.3f}"
        manifest = save_bundle(
            out / f"fold-{result.fold}",
            encoder_model.encoder,
            result.training.head,
            {
                **base,
                "head": config.head,
                "head_kwargs": dict(config.head_kwargs),
                "threshold": result.training.threshold,
                "description": (
                    f"slidemill train: {config.head}, fold {result.fold + 1} of {k_total} "
                    f"(seed {config.seed}); {len(result.train_ids)} training and "
                    f"{len(result.val_ids)} validation slides; held-out AUROC {auc} on "
                    f"{len(result.test_ids)} slides; encoder bundle {encoder_model.sha256[:12]}"
                    f"{chosen}"
                ),
                **trust_fields,
                "reference": trust.reference_entry(),
            },
            reference=fold_reference,
        )
        fold_dirs.append(out / f"fold-{result.fold}")
        fold_sha.append(manifest_sha256(manifest))

    thresholds = [r.training.threshold for r in cv.folds]
    ensemble_threshold = (
        float(np.mean([t for t in thresholds if t is not None]))
        if all(t is not None for t in thresholds)
        else None
    )
    in_dim = enc.feature_dim
    ensemble = ensemble_of(
        [r.training.head for r in cv.folds],
        in_dim=in_dim,
        n_classes=len(match.class_names),
        member=config.head,
        member_kwargs=config.head_kwargs,
    )
    oof_text = "undefined" if cv.oof_auroc is None else f"{cv.oof_auroc:.3f}"
    ensemble_manifest = save_bundle(
        out / ENSEMBLE_DIR,
        encoder_model.encoder,
        ensemble,
        {
            **base,
            "head": ENSEMBLE,
            "head_kwargs": {
                "member": config.head,
                "member_kwargs": member_kwargs_json(config.head_kwargs),
                "n_members": len(cv.folds),
            },
            "threshold": ensemble_threshold,
            "description": (
                f"slidemill train: mean probability of the {len(cv.folds)} fold heads "
                f"({config.head}, seed {config.seed}); out-of-fold AUROC {oof_text}; "
                "threshold = mean of the folds' validation thresholds"
                f"{chosen}"
            ),
            **trust_fields,
            "reference": trust.reference_entry(),
        },
        reference=trust.reference,
    )
    ensemble_sha = manifest_sha256(ensemble_manifest)

    oof_path = out / OOF_CSV
    write_atomic(oof_path, _oof_csv(cv).encode("utf-8"))
    seconds = time.perf_counter() - started
    training = _training_json(
        cv,
        match,
        folder,
        encoder_model.sha256,
        labels_csv,
        fold_sha,
        ensemble_sha,
        ensemble_threshold,
        seconds,
    )
    if selection is not None:
        training["selection"] = dict(selection.record)
    training_path = out / TRAINING_JSON
    write_atomic(training_path, (json.dumps(training, indent=2) + "\n").encode("utf-8"))
    return TrainingReport(
        out=out,
        fold_dirs=tuple(fold_dirs),
        fold_sha256=tuple(fold_sha),
        ensemble_dir=out / ENSEMBLE_DIR,
        ensemble_sha256=ensemble_sha,
        ensemble_threshold=ensemble_threshold,
        training_json=training_path,
        oof_csv=oof_path,
        labels=match,
        cv=cv,
        seconds=seconds,
        ood_threshold=trust.threshold,
        heldout_ood_scores=trust.heldout_scores,
        temperature=trust.temperature,
    )


def _training_json(
    cv: CrossValidation,
    match: LabelMatch,
    folder: FeatureFolder,
    encoder_sha256: str,
    labels_csv: Path,
    fold_sha: Sequence[str],
    ensemble_sha: str,
    ensemble_threshold: float | None,
    seconds: float,
) -> dict[str, Any]:
    config = cv.config
    hyper = asdict(config)
    hyper["head_kwargs"] = dict(config.head_kwargs)
    folds = []
    for r, sha in zip(cv.folds, fold_sha, strict=True):
        t = r.training
        folds.append(
            {
                "fold": r.fold,
                "bundle": f"fold-{r.fold}",
                "model_sha256": sha,
                "n_train": len(r.train_ids),
                "n_val": len(r.val_ids),
                "n_test": len(r.test_ids),
                "validation": list(r.val_ids),
                "test_auroc": r.test_auroc,
                "test_loss": r.test_loss,
                "best_val_loss": t.best_val_loss,
                "epochs_run": t.epochs_run,
                "best_epoch": t.best_epoch,
                "threshold": t.threshold,
                "threshold_note": t.threshold_note,
                "class_weights": list(t.class_weights),
                "seed": t.seed,
                "seconds": round(t.seconds, 3),
                "history": [
                    {"epoch": e.epoch, "train_loss": e.train_loss, "val_loss": e.val_loss}
                    for e in t.history
                ],
            }
        )
    return {
        "format_version": 1,
        "slidemill_version": slidemill_version(),
        "class_names": list(cv.class_names),
        "head": config.head,
        "head_kwargs": dict(config.head_kwargs),
        "seed": config.seed,
        "hyperparameters": hyper,
        "device": cv.device,
        "features_dir": str(folder.root.resolve()),
        "encoder_bundle_sha256": encoder_sha256,
        "labels_csv": str(labels_csv.resolve()),
        "labels": match.to_json(),
        "folds": folds,
        "oof_auroc": cv.oof_auroc,
        "ensemble": {
            "bundle": ENSEMBLE_DIR,
            "model_sha256": ensemble_sha,
            "threshold": ensemble_threshold,
            "threshold_rule": "mean of the folds' validation thresholds",
        },
        "slides": [
            {
                "slide_id": sid,
                "path": folder.slides[sid].path,
                "label": cv.class_names[int(cv.y[i])],
                "fold": int(cv.fold_of[i]),
            }
            for i, sid in enumerate(cv.slide_ids)
        ],
        "seconds": round(seconds, 3),
    }
