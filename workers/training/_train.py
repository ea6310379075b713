"""Training MIL heads on stored features: stratified k-fold cross-validation, reproducibly.

The core works on bags in memory (any `Mapping` of slide id → features (N, D) float32, N varying
from slide to slide) and integer labels, and does no I/O:

- `stratified_folds` deals every class over the folds; `stratified_split` carves a validation
  set out of each training fold, class by class.
- `train_fold` trains one head, one bag per optimiser step (bags differ in N), with class-weighted
  cross-entropy, AdamW (or Adam), the head's own auxiliary loss when it has one (CLAM's instance
  clustering loss, mixed in as CLAM does: 0.7 · bag loss + 0.3 · instance loss), early stopping on
  the validation loss, and keeps the weights of the best validation epoch. For two classes it
  chooses a decision threshold on the validation slides (Youden's J, `choose_threshold`).
- `cross_validate` runs every fold and gathers the held-out (out-of-fold) predictions.

Everything random comes from the seed: the fold assignment and the validation splits from numpy
`default_rng`, the head's initialisation and dropout from torch's generator seeded per fold, the
bag order from a dedicated `torch.Generator`; training runs with
`torch.use_deterministic_algorithms(True)`, inside a context that restores every global it
touches. The same inputs give bit-identical weights on CPU.

The shell around it (`train_from_features`) reads a features folder and a labels CSV, and writes
one model bundle per fold, the `ensemble` bundle of all folds, `training.json` and
`oof_predictions.csv`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import ValidationError
from torch import nn
from torch.nn import functional

from slidemill.schemas import ModelManifest, SlideResult, slidemill_version
from slidemill.workers.errors import LabelError, TrainingError
from slidemill.workers.models import (
    ENSEMBLE,
    HEADS,
    InstanceLossHead,
    MILOutput,
    default_device,
    ensemble_of,
    load_bundle,
    manifest_sha256,
    member_kwargs_json,
    read_manifest,
    save_bundle,
)

HeadKwargs = Mapping[str, int | float | str | bool]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

ENCODER_BUNDLE = "encoder-bundle"
"""The folder of a features folder that holds the encoder the features were computed with."""
TRAINING_JSON = "training.json"
OOF_CSV = "oof_predictions.csv"
ENSEMBLE_DIR = "ensemble"


# --------------------------------------------------------------------------------------------
# value objects


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters of a cross-validated training run."""

    head: str = "abmil_gated"
    """Registered MIL head to train."""
    head_kwargs: HeadKwargs = field(default_factory=dict)
    """The head's hyper-parameters (scalars: they are stored in the bundle's `head_kwargs`)."""
    n_folds: int = 5
    """Cross-validation folds (k ≥ 2); every class needs at least k slides."""
    max_epochs: int = 50
    """Upper bound on epochs per fold (one epoch = every training bag once)."""
    patience: int = 8
    """Stop after this many epochs without a lower validation loss."""
    lr: float = 2e-4
    """Learning rate."""
    weight_decay: float = 1e-4
    """Weight decay (decoupled for AdamW, L2 for Adam)."""
    optimizer: Literal["adamw", "adam"] = "adamw"
    """AdamW (Loshchilov & Hutter) or Adam with L2 weight decay (what CLAM uses)."""
    val_fraction: float = 0.2
    """Share of each class of a training fold held back for early stopping and the threshold."""
    class_weighting: bool = True
    """Weight each bag's cross-entropy by n / (C · n_class) of the training slides."""
    instance_loss_weight: float = 0.3
    """For heads with an instance loss (CLAM): loss = (1 − w) · bag loss + w · instance loss."""
    shuffle: bool = True
    """Visit the training bags in a fresh seeded order every epoch."""
    seed: int = 0
    """Seed of everything random (fold assignment, splits, initialisation, dropout, order)."""
    device: str | None = None
    """torch device to train on; None = CUDA when available, else CPU."""

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise TrainingError(f"need at least 2 folds, got {self.n_folds}")
        if self.max_epochs < 1 or self.patience < 1:
            raise TrainingError(
                f"epochs and patience must be at least 1, got {self.max_epochs} and {self.patience}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"learning rate must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise TrainingError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("adamw", "adam"):
            raise TrainingError(f"optimizer must be 'adamw' or 'adam', got {self.optimizer!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise TrainingError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.instance_loss_weight <= 1.0:
            raise TrainingError(
                f"instance_loss_weight must lie in [0, 1], got {self.instance_loss_weight}"
            )
        if self.seed < 0:
            raise TrainingError(f"seed must be >= 0, got {self.seed}")
        if self.head == ENSEMBLE:
            raise TrainingError("the ensemble head is assembled from trained folds, not trained")
        bad = {k: v for k, v in self.head_kwargs.items() if not isinstance(v, int | float | str)}
        if bad:
            raise TrainingError(f"head kwargs must be numbers, strings or booleans, got {bad}")


@dataclass(frozen=True, slots=True)
class EpochReport:
    """Progress of one epoch of one fold, given to the `on_epoch` callback."""

    fold: int
    """Fold index, from 0."""
    n_folds: int
    """Folds in the run."""
    epoch: int
    """Epoch number, from 1."""
    max_epochs: int
    """Upper bound on epochs."""
    train_loss: float
    """Mean objective over the epoch's training bags (class-weighted, plus any instance loss)."""
    val_loss: float
    """Class-weighted mean cross-entropy over the validation bags (eval mode)."""
    best_epoch: int
    """Epoch of the lowest validation loss so far."""
    best_val_loss: float
    """The lowest validation loss so far."""
    last: bool
    """No epoch of this fold follows (early stop or `max_epochs` reached)."""
    seconds: float
    """Wall time of the epoch."""


@dataclass(frozen=True, slots=True, eq=False)
class TrainedHead:
    """What `train_fold` returns (`eq=False`: holds a module)."""

    head: nn.Module
    """The head with the best validation epoch's weights, on CPU, in eval mode."""
    history: tuple[EpochReport, ...]
    """One report per epoch run."""
    epochs_run: int
    """Epochs run before stopping."""
    best_epoch: int
    """Epoch whose weights were kept (lowest validation loss)."""
    best_val_loss: float
    """Validation loss of that epoch."""
    threshold: float | None
    """Two classes: threshold on P(class 1) chosen on the validation slides; None = argmax."""
    threshold_note: str | None
    """Why there is no threshold, when there could have been one."""
    class_weights: tuple[float, ...]
    """Cross-entropy weight of each class (all 1 without class weighting)."""
    seed: int
    """The seed this fold was trained with."""
    seconds: float
    """Wall time of the training."""


@dataclass(frozen=True, slots=True, eq=False)
class FoldResult:
    """One cross-validation fold: its slides, its trained head, and its held-out predictions."""

    fold: int
    """Fold index, from 0."""
    train_ids: tuple[str, ...]
    """Slides the head was fitted on."""
    val_ids: tuple[str, ...]
    """Slides used for early stopping and the threshold (from the other folds)."""
    test_ids: tuple[str, ...]
    """This fold's held-out slides."""
    training: TrainedHead
    """The trained head and its history."""
    test_probabilities: FloatArray
    """Class probabilities of the held-out slides. Shape: n_test x C, rows as `test_ids`."""
    test_loss: float
    """Mean cross-entropy (unweighted) on the held-out slides."""
    test_auroc: float | None
    """Held-out AUROC (`slide_auroc`: binary, or macro one-vs-rest); None when undefined."""


@dataclass(frozen=True, slots=True, eq=False)
class CrossValidation:
    """What `cross_validate` returns (`eq=False`: arrays)."""

    class_names: tuple[str, ...]
    """Class names; label i is class_names[i]."""
    slide_ids: tuple[str, ...]
    """Every slide, sorted."""
    y: IntArray
    """Class index per slide. Shape: n_slides."""
    fold_of: IntArray
    """Held-out fold of each slide. Shape: n_slides."""
    folds: tuple[FoldResult, ...]
    """One result per fold."""
    oof_probabilities: FloatArray
    """Each slide's probabilities from the fold that held it out. Shape: n_slides x C."""
    oof_auroc: float | None
    """AUROC of the pooled out-of-fold predictions; None when undefined."""
    config: TrainConfig
    """The settings used."""
    device: str
    """The device trained on."""


# --------------------------------------------------------------------------------------------
# splits and weights (pure)


def fold_seed(seed: int, fold: int) -> int:
    """An independent 32-bit seed for each fold, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def stratified_folds(y: Sequence[int] | IntArray, n_folds: int, seed: int) -> IntArray:
    """Fold index of every sample, each class dealt round-robin over the folds in a seeded order.

    y: (n,) class indices → (n,) fold indices in [0, n_folds). Every fold gets ⌊n_c/k⌋ or
    ⌈n_c/k⌉ slides of each class c, and the deal continues from class to class so fold sizes
    differ by at most one. Raises `TrainingError` when a class has fewer slides than folds.
    """
    labels = np.asarray(y, dtype=np.int64)
    if labels.ndim != 1:
        raise TrainingError(f"labels must be 1-D, got shape {labels.shape}")
    if n_folds < 2:
        raise TrainingError(f"need at least 2 folds, got {n_folds}")
    counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
    short = {c: int(n) for c, n in enumerate(counts) if 0 < n < n_folds}
    if short:
        detail = ", ".join(f"class {c} has {n}" for c, n in short.items())
        raise TrainingError(
            f"every class needs at least {n_folds} slides for {n_folds} folds ({detail}); "
            "use fewer folds or label more slides"
        )
    rng = np.random.default_rng(seed)
    fold = np.empty(labels.shape[0], dtype=np.int64)
    offset = 0
    for c in range(counts.shape[0]):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (offset + np.arange(members.shape[0])) % n_folds
        offset = (offset + members.shape[0]) % n_folds
    return fold


def stratified_split(
    y: Sequence[int] | IntArray, fraction: float, seed: int
) -> tuple[IntArray, IntArray]:
    """Split indices into (train, validation), `fraction` of each class to validation.

    y: (n,) class indices → two sorted index arrays. A class of n_c ≥ 2 slides gives
    round(fraction · n_c) slides to validation, at least 1 and at most n_c − 1; a class of one
    slide stays in training. Raises `TrainingError` when nothing is left for validation.
    """
    labels = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val: list[IntArray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_c = members.shape[0]
        n_val = 0 if n_c < 2 else min(max(round(fraction * n_c), 1), n_c - 1)
        val.append(members[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    if val_idx.size == 0:
        raise TrainingError(
            f"{labels.shape[0]} training slides leave none for validation; label more slides"
        )
    train_idx = np.setdiff1d(np.arange(labels.shape[0]), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def class_weights(y: Sequence[int] | IntArray, n_classes: int) -> FloatArray:
    """ "Balanced" cross-entropy weights w_c = n / (C · n_c); a class absent from y gets 0.

    y: (n,) class indices → (C,). Σ_i w_{y_i} = n, so the weighted mean loss keeps the scale of
    the unweighted one, and each class contributes equally in total.
    """
    labels = np.asarray(y, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, labels.shape[0] / (n_classes * counts), 0.0)
    return w.astype(np.float64)


def bag_loss(logits: torch.Tensor, label: int, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy of one bag: w_y · CE(logits, y).

    logits (C,), weights (C,) → a scalar. (torch's `cross_entropy(weight=...)` with mean
    reduction divides by the weight of the batch, which for a batch of one bag cancels it.)
    """
    target = torch.tensor([label], device=logits.device)
    ce = functional.cross_entropy(logits[None].float(), target)
    return weights[label] * ce


# --------------------------------------------------------------------------------------------
# reproducibility


@contextmanager
def deterministic(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and CUDA), numpy's and python's global generators, turn on torch's
    deterministic algorithms and cuDNN's deterministic mode; restore all of it on exit.

    On CUDA, cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` for determinism: set to ':4096:8' when unset.
    An op with no deterministic CUDA kernel (TransMIL's adaptive pooling backward) warns there
    rather than failing the run; on CPU every op is held to it.
    """
    cuda = device.type == "cuda"
    saved_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    saved_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    saved_np = np.random.get_state()
    saved_py = random.getstate()
    saved_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        try:
            if cuda and saved_env is None:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            torch.use_deterministic_algorithms(True, warn_only=cuda)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            yield
        finally:
            torch.use_deterministic_algorithms(saved_flags[0], warn_only=saved_flags[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn
            np.random.set_state(saved_np)
            random.setstate(saved_py)
            if cuda and saved_env is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# --------------------------------------------------------------------------------------------
# training (no I/O)


def build_head(head: str, head_kwargs: HeadKwargs, in_dim: int, n_classes: int) -> nn.Module:
    """A fresh head from the registry; a bad name or setting is a `WorkerError` naming it."""
    if head == ENSEMBLE:
        raise TrainingError("the ensemble head is assembled from trained folds, not trained")
    try:
        return HEADS.build(head, in_dim=in_dim, n_classes=n_classes, **dict(head_kwargs))
    except (TypeError, ValueError) as err:
        raise TrainingError(f"head {head!r} with {dict(head_kwargs)}: {err}") from err


def check_bags(bags: Mapping[str, NDArray[np.float32]], ids: Sequence[str]) -> int:
    """Every id has a non-empty (N, D) bag, all of one width D; returns D.

    A mapping with a `shape_of(slide_id)` method (`FeatureBags`) is asked for shapes instead of
    bags, so checking reads no features.
    """
    width: int | None = None
    shape_of = getattr(bags, "shape_of", None)  # a lazy mapping answers without reading
    for slide_id in ids:
        if slide_id not in bags:
            raise TrainingError(f"slide {slide_id}: no features")
        shape = tuple(shape_of(slide_id)) if callable(shape_of) else np.shape(bags[slide_id])
        if len(shape) != 2 or shape[0] == 0:
            raise TrainingError(f"slide {slide_id}: expected (N>0, D) features, got {shape}")
        if width is None:
            width = int(shape[1])
        elif shape[1] != width:
            raise TrainingError(
                f"slide {slide_id}: {shape[1]}-d features where the others are {width}-d"
            )
    if width is None:
        raise TrainingError("no slides to train on")
    return width


def _bag_tensor(bag: NDArray[np.float32], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(bag, dtype=np.float32)).to(device)


def _device(config: TrainConfig) -> torch.device:
    return torch.device(config.device) if config.device else default_device()


def predict_probabilities(
    head: nn.Module,
    bags: Mapping[str, NDArray[np.float32]],
    ids: Sequence[str],
    device: torch.device | None = None,
) -> FloatArray:
    """Slide class probabilities of `ids`, in eval mode. → (len(ids), C) float64.

    Runs where the head's parameters are unless `device` is given (the head is then moved there
    and back).
    """
    home = next(head.parameters()).device
    where = device or home
    was_training = head.training
    head.to(where).eval()
    rows = []
    try:
        with torch.inference_mode():
            for slide_id in ids:
                out: MILOutput = head(_bag_tensor(bags[slide_id], where))
                rows.append(torch.softmax(out.logits.double(), dim=-1).cpu().numpy())
    finally:
        head.to(home).train(was_training)
    if not rows:
        return np.zeros((0, 0), dtype=np.float64)
    return np.stack(rows).astype(np.float64)


def _weighted_val_loss(
    head: nn.Module,
    bags: Mapping[str, NDArray[np.float32]],
    ids: Sequence[str],
    labels: Mapping[str, int],
    weights: torch.Tensor,
    device: torch.device,
) -> float:
    """Σ w_y · CE / Σ w_y over `ids` (eval mode, no gradient)."""
    total = 0.0
    weight_sum = 0.0
    with torch.inference_mode():
        for slide_id in ids:
            y = int(labels[slide_id])
            out: MILOutput = head(_bag_tensor(bags[slide_id], device))
            total += float(bag_loss(out.logits, y, weights))
            weight_sum += float(weights[y])
    if weight_sum == 0.0:
        raise TrainingError("the validation slides' classes all have zero weight")
    return total / weight_sum


def train_fold(
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    n_classes: int,
    config: TrainConfig,
    *,
    fold: int = 0,
    n_folds: int = 1,
    seed: int | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainedHead:
    """Train one head on `train_ids`, early-stopped on `val_ids`.

    bags: slide id → features (N, D) float32; labels: slide id → class index in [0, C). Each step
    is one bag: forward (N, D) → MILOutput, loss w_y · CE(logits (C,), y) (class weights from the
    training slides), plus the head's `instance_loss` when it is an `InstanceLossHead`. After each
    epoch the class-weighted validation cross-entropy decides early stopping (`patience` epochs
    without a new minimum); the best epoch's weights are returned. `seed` (default
    `config.seed`) fixes initialisation, dropout and bag order.
    """
    if not train_ids:
        raise TrainingError(f"fold {fold}: no training slides")
    if not val_ids:
        raise TrainingError(f"fold {fold}: no validation slides")
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise TrainingError(f"fold {fold}: slides in both training and validation: {overlap}")
    run_seed = config.seed if seed is None else seed
    device = _device(config)
    in_dim = check_bags(bags, [*train_ids, *val_ids])
    y_train = np.array([labels[i] for i in train_ids], dtype=np.int64)
    if y_train.min() < 0 or y_train.max() >= n_classes:
        raise TrainingError(f"fold {fold}: labels must lie in [0, {n_classes})")
    w = class_weights(y_train, n_classes) if config.class_weighting else np.ones(n_classes)
    started = time.perf_counter()
    history: list[EpochReport] = []
    with deterministic(run_seed, device):
        head = build_head(config.head, config.head_kwargs, in_dim, n_classes).to(device)
        optimiser_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimiser = optimiser_cls(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        weights = torch.tensor(w, dtype=torch.float32, device=device)
        order_rng = torch.Generator().manual_seed(run_seed)
        mix = config.instance_loss_weight if isinstance(head, InstanceLossHead) else 0.0
        best_state: dict[str, torch.Tensor] = {}
        best_loss, best_epoch = math.inf, 0
        for epoch in range(1, config.max_epochs + 1):
            epoch_start = time.perf_counter()
            head.train()
            if config.shuffle:
                order = torch.randperm(len(train_ids), generator=order_rng).tolist()
            else:
                order = list(range(len(train_ids)))
            total = 0.0
            for i in order:
                slide_id = train_ids[i]
                y = int(labels[slide_id])
                x = _bag_tensor(bags[slide_id], device)
                out: MILOutput = head(x)
                loss = bag_loss(out.logits, y, weights)
                if mix > 0.0 and isinstance(head, InstanceLossHead):
                    loss = (1.0 - mix) * loss + mix * head.instance_loss(x, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(
                        f"fold {fold}, epoch {epoch}: the loss became {value} on slide "
                        f"{slide_id}; lower the learning rate"
                    )
                total += value
            train_loss = total / len(order)
            head.eval()
            val_loss = _weighted_val_loss(head, bags, val_ids, labels, weights, device)
            if not math.isfinite(val_loss):
                raise TrainingError(
                    f"fold {fold}, epoch {epoch}: the validation loss is {val_loss}; "
                    "lower the learning rate"
                )
            if val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            last = epoch - best_epoch >= config.patience or epoch == config.max_epochs
            report = EpochReport(
                fold=fold,
                n_folds=n_folds,
                epoch=epoch,
                max_epochs=config.max_epochs,
                train_loss=train_loss,
                val_loss=val_loss,
                best_epoch=best_epoch,
                best_val_loss=best_loss,
                last=last,
                seconds=time.perf_counter() - epoch_start,
            )
            history.append(report)
            if on_epoch is not None:
                on_epoch(report)
            if last:
                break
        head.load_state_dict(best_state)
        head.eval()
        threshold, note = _choose_threshold(head, bags, labels, val_ids, n_classes, device)
    return TrainedHead(
        head=head.cpu().eval(),
        history=tuple(history),
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_val_loss=best_loss,
        threshold=threshold,
        threshold_note=note,
        class_weights=tuple(float(v) for v in w),
        seed=run_seed,
        seconds=time.perf_counter() - started,
    )


def _choose_threshold(
    head: nn.Module,
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    val_ids: Sequence[str],
    n_classes: int,
    device: torch.device,
) -> tuple[float | None, str | None]:
    """Youden's-J threshold on P(class 1) over the validation slides (two classes only)."""
    from slidemill.pipeline.evaluation import choose_threshold  # here: pipeline imports workers

    if n_classes != 2:
        return None, None
    y_val = np.array([labels[i] for i in val_ids], dtype=np.int64)
    if np.unique(y_val).shape[0] < 2:
        return None, "the validation slides hold one class only: argmax decides"
    p = predict_probabilities(head, bags, val_ids, device)
    return choose_threshold(y_val == 1, p[:, 1]).value, None


def _held_out(probabilities: FloatArray, y: IntArray) -> tuple[float, float | None]:
    """Mean cross-entropy and AUROC (None when undefined) of held-out predictions."""
    from slidemill.pipeline.evaluation import UndefinedMetricError, slide_auroc

    picked = probabilities[np.arange(y.shape[0]), y]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
    try:
        return loss, slide_auroc(y, probabilities)
    except UndefinedMetricError:
        return loss, None


def cross_validate(
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    class_names: Sequence[str],
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> CrossValidation:
    """Stratified k-fold cross-validation of `config.head` on `bags`.

    bags: slide id → features (N, D) float32; labels: slide id → class index into `class_names`.
    Fold k holds out its slides, trains on the others (less a stratified validation share for
    early stopping and the threshold) and predicts the held-out slides. Slides are taken in
    sorted order, so the result depends on the slides, labels and seed, not on mapping order.
    """
    names = tuple(class_names)
    n_classes = len(names)
    if n_classes < 2:
        raise TrainingError(f"need at least 2 classes, got {list(names)}")
    ids = sorted(labels)
    y = np.array([labels[i] for i in ids], dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise TrainingError(f"labels must be class indices in [0, {n_classes})")
    missing = [names[c] for c in range(n_classes) if not np.any(y == c)]
    if missing:
        raise TrainingError(f"no slides of class {', '.join(missing)}")
    in_dim = check_bags(bags, ids)
    with torch.random.fork_rng(devices=[]):  # a bad head or setting fails before any training
        build_head(config.head, config.head_kwargs, in_dim, n_classes)
    fold_of = stratified_folds(y, config.n_folds, config.seed)
    device = _device(config)
    results: list[FoldResult] = []
    oof = np.zeros((len(ids), n_classes), dtype=np.float64)
    for k in range(config.n_folds):
        seed = fold_seed(config.seed, k)
        test_idx = np.flatnonzero(fold_of == k)
        rest_idx = np.flatnonzero(fold_of != k)
        train_rel, val_rel = stratified_split(y[rest_idx], config.val_fraction, seed)
        train_ids = tuple(ids[i] for i in rest_idx[train_rel])
        val_ids = tuple(ids[i] for i in rest_idx[val_rel])
        test_ids = tuple(ids[i] for i in test_idx)
        trained = train_fold(
            bags,
            labels,
            train_ids,
            val_ids,
            n_classes,
            config,
            fold=k,
            n_folds=config.n_folds,
            seed=seed,
            on_epoch=on_epoch,
        )
        probs = predict_probabilities(trained.head, bags, test_ids, device)
        oof[test_idx] = probs
        loss, auc = _held_out(probs, y[test_idx])
        results.append(
            FoldResult(
                fold=k,
                train_ids=train_ids,
                val_ids=val_ids,
                test_ids=test_ids,
                training=trained,
                test_probabilities=probs,
                test_loss=loss,
                test_auroc=auc,
            )
        )
    _, oof_auroc = _held_out(oof, y)
    return CrossValidation(
        class_names=names,
        slide_ids=tuple(ids),
        y=y,
        fold_of=fold_of,
        folds=tuple(results),
        oof_probabilities=oof,
        oof_auroc=oof_auroc,
        config=config,
        device=str(device),
    )


# --------------------------------------------------------------------------------------------
# the features folder


@dataclass(frozen=True, slots=True)
class FeatureSlide:
    """One slide folder of a features folder."""

    slide_id: str
    """Folder name = slide id."""
    path: str
    """The slide file's path, from `result.json` ('' when unreadable)."""
    store: Path
    """Its `slide.zarr` group."""
    n_tiles: int
    """Rows of its `features` array (0 when it has none)."""
    reason: str | None
    """Why it has no usable features (not done, no `features` array, ...); None when usable."""


@dataclass(frozen=True, slots=True)
class FeatureFolder:
    """A features folder as scanned: the encoder bundle and every slide folder."""

    root: Path
    """The folder."""
    encoder_bundle: Path
    """`root/encoder-bundle`: the encoder the features were computed with."""
    manifest: ModelManifest
    """The encoder bundle's manifest (feature_dim, input_mpp, tile_px, normalisation)."""
    slides: Mapping[str, FeatureSlide]
    """Slide id → slide folder, usable or not."""


def scan_features(root: Path) -> FeatureFolder:
    """Read a features folder's encoder manifest and every `<slide_id>/result.json`.

    A slide has usable features when its result is `done` and its `slide.zarr/features` array is
    (N > 0, feature_dim). Features of another width mean the folder mixes encoders: an error.
    """
    import zarr

    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"{root}: no such features folder")
    bundle = root / ENCODER_BUNDLE
    if not (bundle / "manifest.json").is_file():
        raise TrainingError(
            f"{root}: not a features folder (no {ENCODER_BUNDLE}/manifest.json); "
            "make one with `slidemill features`"
        )
    manifest = read_manifest(bundle)
    slides: dict[str, FeatureSlide] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        result_path = folder / "result.json"
        if folder.name.startswith(".") or folder.name == ENCODER_BUNDLE:
            continue
        if not result_path.is_file():
            continue
        store = folder / "slide.zarr"
        try:
            result = SlideResult.model_validate_json(result_path.read_bytes())
        except (ValidationError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            slides[folder.name] = FeatureSlide(
                folder.name, "", store, 0, f"unreadable result.json ({first})"
            )
            continue
        if result.status != "done":
            why = f"status {result.status}: {result.error}" if result.error else result.status
            slides[folder.name] = FeatureSlide(folder.name, result.path, store, 0, why)
            continue
        try:
            shape = tuple(zarr.open_array(store=str(store / "features"), mode="r").shape)
        except (FileNotFoundError, OSError, ValueError, KeyError) as err:
            slides[folder.name] = FeatureSlide(
                folder.name, result.path, store, 0, f"no features array ({type(err).__name__})"
            )
            continue
        if len(shape) != 2 or shape[0] == 0:
            slides[folder.name] = FeatureSlide(
                folder.name, result.path, store, 0, f"features of shape {shape}, no tiles"
            )
            continue
        if shape[1] != manifest.feature_dim:
            raise TrainingError(
                f"{store}: {shape[1]}-d features, but {bundle} makes {manifest.feature_dim}-d "
                "ones; a features folder holds one encoder's features"
            )
        slides[folder.name] = FeatureSlide(folder.name, result.path, store, int(shape[0]), None)
    return FeatureFolder(root, bundle, manifest, slides)


class FeatureBags(Mapping[str, NDArray[np.float32]]):
    """Slide id → features (N, D) float32, read from each slide's Zarr store on first access.

    Bags are kept in memory while they fit in `cache_bytes`; beyond that they are read again at
    every access (each epoch), so a cohort larger than memory still trains.
    """

    def __init__(self, stores: Mapping[str, Path], cache_bytes: int = 8 << 30) -> None:
        self._stores = dict(stores)
        self._cache: dict[str, NDArray[np.float32]] = {}
        self._cache_bytes = cache_bytes
        self._cached = 0

    def __getitem__(self, slide_id: str) -> NDArray[np.float32]:
        import zarr

        bag = self._cache.get(slide_id)
        if bag is not None:
            return bag
        store = self._stores[slide_id]
        data = zarr.open_array(store=str(store / "features"), mode="r")[...]
        bag = np.ascontiguousarray(np.asarray(data), dtype=np.float32)
        if self._cached + bag.nbytes <= self._cache_bytes:
            self._cache[slide_id] = bag
            self._cached += bag.nbytes
        return bag

    def shape_of(self, slide_id: str) -> tuple[int, ...]:
        """The bag's shape, from the cache or the array's metadata (no data read)."""
        import zarr

        bag = self._cache.get(slide_id)
        if bag is not None:
            return tuple(bag.shape)
        array = zarr.open_array(store=str(self._stores[slide_id] / "features"), mode="r")
        return tuple(int(n) for n in array.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._stores)

    def __len__(self) -> int:
        return len(self._stores)

    def __contains__(self, slide_id: object) -> bool:
        return slide_id in self._stores


# --------------------------------------------------------------------------------------------
# labels


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One row of a labels CSV."""

    line: int
    """Line number in the file (the header is line 1)."""
    slide_id: str | None
    """The `slide_id` cell, if the column exists and the cell is not empty."""
    path: str | None
    """The `path` cell, if the column exists and the cell is not empty."""
    label: str
    """The `label` cell, stripped ('' when empty)."""

    @property
    def key(self) -> str:
        """How to name the row in a message."""
        return self.slide_id or self.path or f"line {self.line}"


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A CSV row that gives no training slide, and why."""

    line: int
    """Line number in the CSV."""
    key: str
    """The row's slide_id or path."""
    reason: str
    """Why: no slide folder, not done, empty label, ambiguous stem, ..."""


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """Labels matched to the slides of a features folder, and what did not match."""

    labels: Mapping[str, str]
    """Slide id → label, for every slide with a label and usable features."""
    class_names: tuple[str, ...]
    """Classes in order: `--classes` when given, else the sorted labels."""
    class_counts: Mapping[str, int]
    """Class → slides with features."""
    matched_by: Mapping[str, int]
    """'slide_id' / 'path' / 'stem' → rows matched that way."""
    unmatched: tuple[Unmatched, ...]
    """CSV rows that give no training slide."""
    unlabelled: tuple[str, ...]
    """Slides with usable features but no label."""
    duplicates: tuple[str, ...]
    """Rows that repeat a slide already labelled with the same label."""
    n_rows: int
    """Data rows in the CSV."""

    def warnings(self, shown: int = 8) -> list[str]:
        """One line per kind of problem, naming up to `shown` slides each."""

        def few(items: Sequence[str]) -> str:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            return ", ".join(items[:shown]) + more

        out = []
        if self.unmatched:
            out.append(
                f"{len(self.unmatched)} row(s) of the labels CSV give no training slide: "
                + few([f"{u.key} (line {u.line}: {u.reason})" for u in self.unmatched])
            )
        if self.unlabelled:
            out.append(
                f"{len(self.unlabelled)} slide(s) with features have no label and are left "
                f"out: {few(list(self.unlabelled))}"
            )
        if self.duplicates:
            out.append(f"{len(self.duplicates)} duplicate row(s): {few(list(self.duplicates))}")
        return out

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready data (for training.json)."""
        return {
            "n_rows": self.n_rows,
            "n_slides": len(self.labels),
            "class_counts": dict(self.class_counts),
            "matched_by": dict(self.matched_by),
            "unmatched": [asdict(u) for u in self.unmatched],
            "unlabelled": list(self.unlabelled),
            "duplicates": list(self.duplicates),
        }


def read_label_csv(path: Path) -> tuple[LabelRow, ...]:
    """The rows of a labels CSV: a `label` column and a `slide_id` and/or `path` column.

    Header names are matched without case or surrounding spaces; a UTF-8 byte-order mark is
    ignored. Raises `LabelError` naming the file and what is wrong.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise LabelError(f"{path}: no such labels file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(f"{path}: cannot read the labels file ({err})") from err
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            raise LabelError(f"{path}: empty labels file")
        columns = [h.strip().lower() for h in header]
        if "label" not in columns:
            raise LabelError(f"{path}: no 'label' column (columns: {', '.join(columns)})")
        if "slide_id" not in columns and "path" not in columns:
            raise LabelError(f"{path}: needs a 'slide_id' or a 'path' column to name slides")

        def cell(row: list[str], name: str) -> str | None:
            if name not in columns:
                return None
            i = columns.index(name)
            value = row[i].strip() if i < len(row) else ""
            return value or None

        rows = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            line = reader.line_num
            rows.append(
                LabelRow(line, cell(row, "slide_id"), cell(row, "path"), cell(row, "label") or "")
            )
    except csv.Error as err:
        raise LabelError(f"{path}: not a readable CSV ({err})") from err
    if not rows:
        raise LabelError(f"{path}: no rows under the header")
    return tuple(rows)


def _norm(path: str | Path) -> str:
    """An absolute path with `..` and doubled separators folded (no symlinks resolved)."""
    return os.path.normpath(Path(path).absolute())


def match_labels(
    rows: Sequence[LabelRow],
    slides: Mapping[str, FeatureSlide],
    *,
    classes: Sequence[str] | None = None,
    base: Path | None = None,
) -> LabelMatch:
    """Give each slide of a features folder its label from the CSV rows.

    A row names its slide by `slide_id` first, else by `path` (the result's path, a relative one
    taken from `base`, the CSV's folder), else by the stem of its path (or slide id) matched to
    the stems of the slides' file names. Rows that match nothing, match a slide without
    features, or match several slides by stem are reported in `unmatched`, and slides with
    features but no row in `unlabelled`. Raises `LabelError` for a label outside `classes`, a
    slide given two different labels, or fewer than two classes among the usable slides.
    """
    by_path = {_norm(s.path): sid for sid, s in slides.items() if s.path}
    by_stem: dict[str, list[str]] = {}
    for sid, s in slides.items():
        stem = Path(s.path).stem if s.path else sid
        by_stem.setdefault(stem, []).append(sid)
    wanted = tuple(classes) if classes is not None else None
    if wanted is not None and (len(wanted) < 2 or len(set(wanted)) != len(wanted)):
        raise LabelError(f"--classes needs two or more distinct names, got {list(wanted)}")

    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    matched_by = {"slide_id": 0, "path": 0, "stem": 0}
    unmatched: list[Unmatched] = []
    duplicates: list[str] = []
    for row in rows:
        if wanted is not None and row.label and row.label not in wanted:
            raise LabelError(
                f"line {row.line} ({row.key}): label {row.label!r} is not one of the classes "
                f"{', '.join(wanted)}"
            )
        found, how, why = _find_slide(row, slides, by_path, by_stem, base)
        if found is None:
            unmatched.append(Unmatched(row.line, row.key, why))
            continue
        slide = slides[found]
        if slide.reason is not None:
            unmatched.append(Unmatched(row.line, row.key, f"slide {found}: {slide.reason}"))
            continue
        if not row.label:
            unmatched.append(Unmatched(row.line, row.key, "empty label"))
            continue
        matched_by[how] += 1
        if found in labels:
            if labels[found] != row.label:
                raise LabelError(
                    f"slide {found} is labelled {labels[found]!r} on line {first_line[found]} "
                    f"and {row.label!r} on line {row.line}"
                )
            duplicates.append(f"{row.key} (line {row.line} repeats line {first_line[found]})")
            continue
        labels[found] = row.label
        first_line[found] = row.line

    present = sorted(set(labels.values()))
    names = wanted if wanted is not None else tuple(present)
    counts = {c: sum(1 for v in labels.values() if v == c) for c in names}
    if len(present) < 2:
        found_text = f"only {present[0]!r}" if present else "none"
        raise LabelError(
            f"need slides of at least 2 classes with features, found {found_text} among "
            f"{len(labels)} labelled slide(s) ({len(unmatched)} row(s) had no features)"
        )
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise LabelError(f"no slides with features for class(es) {', '.join(empty)}")
    unlabelled = tuple(
        sid for sid, s in sorted(slides.items()) if s.reason is None and sid not in labels
    )
    return LabelMatch(
        labels=dict(sorted(labels.items())),
        class_names=tuple(names),
        class_counts=counts,
        matched_by=matched_by,
        unmatched=tuple(unmatched),
        unlabelled=unlabelled,
        duplicates=tuple(duplicates),
        n_rows=len(rows),
    )


def _find_slide(
    row: LabelRow,
    slides: Mapping[str, FeatureSlide],
    by_path: Mapping[str, str],
    by_stem: Mapping[str, list[str]],
    base: Path | None,
) -> tuple[str | None, str, str]:
    """(slide id, how it matched, '') or (None, '', why not)."""
    if row.slide_id is not None and row.slide_id in slides:
        return row.slide_id, "slide_id", ""
    if row.path is not None:
        given = Path(row.path)
        candidates = [given]
        if base is not None and not given.is_absolute():
            candidates.insert(0, base / given)  # relative paths: from the CSV's folder first
        for candidate in candidates:
            hit = by_path.get(_norm(candidate))
            if hit is not None:
                return hit, "path", ""
    stems = {Path(v).stem for v in (row.path, row.slide_id) if v}
    hits = sorted({sid for stem in stems for sid in by_stem.get(stem, [])})
    if len(hits) == 1:
        return hits[0], "stem", ""
    if len(hits) > 1:
        return None, "", f"its stem matches several slides ({', '.join(hits)}); give the slide_id"
    return None, "", "no slide folder with this slide_id, path or stem in the features folder"


# --------------------------------------------------------------------------------------------
# the run: features folder + labels → bundles, training.json, oof_predictions.csv


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


def resolve_model_dir(path: Path) -> Path:
    """`path/ensemble` when `path` is a training folder (`training.json` and
    `ensemble/manifest.json`), else `path`: `--model` accepts either."""
    path = Path(path)
    if (path / TRAINING_JSON).is_file() and (path / ENSEMBLE_DIR / "manifest.json").is_file():
        return path / ENSEMBLE_DIR
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


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
) -> TrainingReport:
    """Cross-validate a head on a features folder and write the training folder `out`:

        fold-<k>/              a bundle per fold: the features' encoder + that fold's head,
                               with its validation threshold (two classes)
        ensemble/              a bundle whose `ensemble` head averages the fold heads
        training.json          per-fold metrics, fold of every slide, labels summary, settings
        oof_predictions.csv    slide_id, fold, label, prob_<class>...: held-out predictions

    `on_labels` sees the label matching (with its warnings) before training starts; `on_epoch`
    every epoch of every fold. `training.json` is written last: its presence marks a complete
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
    }
    out.mkdir(parents=True, exist_ok=True)
    fold_dirs, fold_sha = [], []
    k_total = config.n_folds
    for result in cv.folds:
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
                ),
            },
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
            ),
        },
    )
    ensemble_sha = manifest_sha256(ensemble_manifest)

    oof_path = out / OOF_CSV
    _write_atomic(oof_path, _oof_csv(cv))
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
    training_path = out / TRAINING_JSON
    _write_atomic(training_path, json.dumps(training, indent=2) + "\n")
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
