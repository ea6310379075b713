"""`train --select auto`: features folders (one per encoder) and a labels CSV in; the nested
selection among their encoder/head pairs (`_select`), then the chosen pair trained as `train`
trains, its training folder recording the selection."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from slidemill.workers.errors import TrainingError
from slidemill.workers.training._config import EpochReport, FloatArray, TrainConfig
from slidemill.workers.training._features import FeatureBags, FeatureFolder, scan_features
from slidemill.workers.training._labels import LabelMatch, match_labels, read_label_csv
from slidemill.workers.training._loop import (
    build_head,
    fit_split,
    predict_probabilities,
    training_device,
)
from slidemill.workers.training._run import TrainingReport, train_from_features
from slidemill.workers.training._select import (
    Candidate,
    Fit,
    NestedSelection,
    SelectionConfig,
    SelectionRecord,
    nested_select,
)


@dataclass(frozen=True, slots=True, eq=False)
class SelectionReport:
    """What `select_and_train` chose and wrote (`eq=False`: holds arrays)."""

    selection: NestedSelection
    """The candidates' figures, the choice and the nested estimate."""
    encoders: tuple[str, ...]
    """The features folders' names, as the candidates name them, in the order given."""
    folders: tuple[FeatureFolder, ...]
    """The features folders, in the same order."""
    training: TrainingReport
    """The chosen candidate's training folder, as `train_from_features` reports it."""
    seconds: float
    """Wall time of the selection and the training."""


def _names(dirs: Sequence[Path]) -> tuple[str, ...]:
    """Each folder's own name, or the path as given where two folders share a name."""
    base = [d.name or str(d) for d in dirs]
    return tuple(b if base.count(b) == 1 else str(d) for b, d in zip(base, dirs, strict=True))


def _check_coverage(folders: Sequence[FeatureFolder], matches: Sequence[LabelMatch]) -> None:
    """Every folder has usable features of the same labelled slides; else one line naming the
    folder and the first slide it lacks."""
    for folder, match in zip(folders, matches, strict=True):
        for other, theirs in zip(folders, matches, strict=True):
            missing = sorted(set(theirs.labels) - set(match.labels))
            if not missing:
                continue
            sid = missing[0]
            slide = folder.slides.get(sid)
            why = (
                "no slide folder"
                if slide is None
                else f"no usable features ({slide.reason or 'no label matched it'})"
            )
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise TrainingError(
                f"{folder.root}: labelled slide {sid}{more} has {why} here, but features in "
                f"{other.root}; every --features folder must hold the same labelled slides"
            )


def _n_parameters(head: str, in_dim: int, n_classes: int) -> int:
    with torch.random.fork_rng(devices=[]):
        module = build_head(head, {}, in_dim, n_classes)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def select_and_train(
    labels_csv: Path,
    features_dirs: Sequence[Path],
    out: Path,
    config: TrainConfig,
    selection: SelectionConfig | None = None,
    *,
    classes: Sequence[str] | None = None,
    on_labels: Callable[[LabelMatch], None] | None = None,
    on_fit: Callable[[Fit], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    cache_bytes: int = 8 << 30,
) -> SelectionReport:
    """Choose an encoder/head pair by nested cross-validation, then train it into `out`.

    The candidates are every features folder (in the order given) with every head of
    `selection.heads`, each with its default settings; the outer folds are `config.n_folds`
    (with `config.seed`: `train`'s folds), the inner ones `selection.inner_folds`. Every fit
    trains as a `train` fold does (`fit_split`, `config`'s schedule). The candidate the plain CV
    over the outer folds picks is then trained by `train_from_features` (a bundle per fold, the
    ensemble, `training.json` with a `selection` object). Every folder must hold usable
    features of the same labelled slides. `on_fit` sees every fit of the selection before it
    is made, `on_epoch` the epochs of the final training only.
    """
    started = time.perf_counter()
    settings = selection or SelectionConfig()
    labels_csv, out = Path(labels_csv), Path(out)
    dirs = [Path(d) for d in features_dirs]
    if not dirs:
        raise TrainingError("no features folder to choose among")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"{out}: exists and is not empty; choose a new folder")
    if config.head_kwargs:
        raise TrainingError(
            "a selection trains every head with its default settings; drop the head kwargs"
        )
    resolved = [d.resolve() for d in dirs]
    twice = [str(d) for i, d in enumerate(dirs) if resolved[i] in resolved[:i]]
    if twice:
        raise TrainingError(f"{twice[0]}: features folder given twice")
    folders = [scan_features(d) for d in dirs]
    names = _names(dirs)
    rows = read_label_csv(labels_csv)
    matches = [
        match_labels(rows, f.slides, classes=classes, base=labels_csv.parent) for f in folders
    ]
    _check_coverage(folders, matches)
    match = matches[0]
    if on_labels is not None:
        on_labels(match)
    index = {name: i for i, name in enumerate(match.class_names)}
    labels = {sid: index[label] for sid, label in match.labels.items()}
    n_classes = len(match.class_names)
    share = max(cache_bytes // len(folders), 0)
    bags = {
        name: FeatureBags({sid: f.slides[sid].store for sid in labels}, share)
        for name, f in zip(names, folders, strict=True)
    }
    candidates = [
        Candidate(name, head, _n_parameters(head, f.manifest.feature_dim, n_classes))
        for name, f in zip(names, folders, strict=True)
        for head in settings.heads
    ]
    device = training_device(config)

    def predict(fit: Fit) -> FloatArray:
        cfg = replace(config, head=fit.candidate.head, head_kwargs={})
        features = bags[fit.candidate.encoder]
        *_, trained = fit_split(
            features,
            labels,
            fit.train_ids,
            n_classes,
            cfg,
            seed=fit.seed,
            fold=fit.outer_fold,
            n_folds=config.n_folds,
        )
        return predict_probabilities(trained.head, features, fit.test_ids, device)

    nested = nested_select(
        labels,
        n_classes,
        candidates,
        predict,
        outer_folds=config.n_folds,
        inner_folds=settings.inner_folds,
        seed=config.seed,
        on_fit=on_fit,
    )
    chosen = nested.chosen
    folder = folders[names.index(chosen.encoder)]
    encoders: list[dict[str, Any]] = [
        {
            "name": name,
            "features_dir": str(f.root.resolve()),
            "encoder": f.manifest.encoder,
            "encoder_preset": f.manifest.encoder_preset,
            "feature_dim": f.manifest.feature_dim,
            "tile_px": f.manifest.tile_px,
            "input_mpp": f.manifest.input_mpp,
        }
        for name, f in zip(names, folders, strict=True)
    ]
    record = SelectionRecord(
        summary=nested.summary(),
        record={
            **nested.to_json(),
            "encoders": encoders,
            "selection_seconds": round(time.perf_counter() - started, 3),
        },
    )
    training = train_from_features(
        labels_csv,
        folder.root,
        out,
        replace(config, head=chosen.head, head_kwargs={}),
        classes=classes,
        on_epoch=on_epoch,
        cache_bytes=cache_bytes,
        selection=record,
    )
    return SelectionReport(
        selection=nested,
        encoders=names,
        folders=tuple(folders),
        training=training,
        seconds=time.perf_counter() - started,
    )
