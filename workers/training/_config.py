"""The value objects of training: its settings, and what a fold and a cross-validation return."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from torch import nn

from slidemill.workers.errors import TrainingError
from slidemill.workers.models import ENSEMBLE

HeadKwargs = Mapping[str, int | float | str | bool]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters of a cross-validated training run."""

    head: str = "topk_linear"
    """Registered MIL head to train. The default, instance scores with top-k pooling, held up
    on 16–64-slide cohorts of both benchmarks where attention MIL did not (`slidemill
    bench-learning`; docs/learning-studies.md)."""
    head_kwargs: HeadKwargs = field(default_factory=dict)
    """The head's hyper-parameters (scalars: they are stored in the bundle's `head_kwargs`)."""
    n_folds: int = 5
    """Cross-validation folds (k ≥ 2); every class needs at least k slides."""
    max_epochs: int = 40
    """Upper bound on epochs per fold (one epoch = every training bag once)."""
    patience: int = 8
    """Stop after this many epochs without a lower (smoothed) validation loss."""
    min_epochs: int | None = None
    """No fold stops, and no epoch is chosen as the best, before this epoch: a validation split
    of a few slides cannot decide at epoch 1. None: `max_epochs` (a fixed schedule; the default,
    chosen by `slidemill bench-learning` with `weight_averaging`)."""
    smoothing: int = 1
    """Early stopping and the best epoch follow the mean of the last this-many epochs'
    validation losses (1 = the raw loss); a few validation slides make it noisy."""
    weight_averaging: int = 20
    """Above 0: keep the average of the weights at the end of the last this-many epochs run
    (stochastic weight averaging over a fixed schedule) instead of the best epoch's weights."""
    lr: float = 5e-4
    """Learning rate."""
    weight_decay: float = 1e-2
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

    @property
    def first_decision(self) -> int:
        """The first epoch that may stop a fold or be kept: `min_epochs`, else `max_epochs`."""
        return self.max_epochs if self.min_epochs is None else self.min_epochs

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise TrainingError(f"need at least 2 folds, got {self.n_folds}")
        if self.max_epochs < 1 or self.patience < 1:
            raise TrainingError(
                f"epochs and patience must be at least 1, got {self.max_epochs} and {self.patience}"
            )
        if self.min_epochs is not None and not 1 <= self.min_epochs <= self.max_epochs:
            raise TrainingError(
                f"min_epochs must lie in [1, max_epochs={self.max_epochs}], got {self.min_epochs}"
            )
        if self.smoothing < 1 or self.weight_averaging < 0:
            raise TrainingError(
                f"smoothing must be at least 1 and weight_averaging at least 0, got "
                f"{self.smoothing} and {self.weight_averaging}"
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
    """Epoch of the lowest (smoothed) validation loss so far, from `min_epochs` on (0: none)."""
    best_val_loss: float
    """The lowest (smoothed) validation loss so far."""
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
    """Epoch whose weights were kept (lowest smoothed validation loss), or with weight
    averaging the last epoch of the average."""
    best_val_loss: float
    """Validation loss of the kept weights."""
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
