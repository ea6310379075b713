"""Splits and weights, pure functions of the labels and the seed: stratified folds, the
validation share of a training fold, balanced class weights, and the class-weighted bag loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional

from slidemill.workers.errors import TrainingError
from slidemill.workers.training._config import FloatArray, IntArray


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
