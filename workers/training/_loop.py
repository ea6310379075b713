"""Training MIL heads on bags in memory, reproducibly; no I/O.

The loop works on any `Mapping` of slide id → features (N, D) float32, N varying from slide to
slide, and integer labels:

- `train_fold` trains one head, one bag per optimiser step (bags differ in N), with class-weighted
  cross-entropy, AdamW (or Adam), the head's own auxiliary loss when it has one (CLAM's instance
  clustering loss, mixed in as CLAM does: 0.7 · bag loss + 0.3 · instance loss), early stopping on
  the (optionally smoothed) validation loss from `min_epochs` on, and keeps the weights of the
  best validation epoch, or the average of the last epochs' weights. For two classes it
  chooses a decision threshold on the validation slides (Youden's J, `choose_threshold`).
- `fit_split` trains on a fold's training part as a fold does (a stratified validation share
  held back); `cross_validate` runs it for every fold and gathers the held-out (out-of-fold)
  predictions.

Everything random comes from the seed: the fold assignment and the validation splits from numpy
`default_rng`, the head's initialisation and dropout from torch's generator seeded per fold, the
bag order from a dedicated `torch.Generator`; training runs with
`torch.use_deterministic_algorithms(True)`, inside a context that restores every global it
touches. The same inputs give bit-identical weights on CPU.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.optim.swa_utils import AveragedModel

from slidemill.workers.errors import TrainingError
from slidemill.workers.metrics import UndefinedMetricError, choose_threshold, slide_auroc
from slidemill.workers.models import (
    ENSEMBLE,
    HEADS,
    FittedInputHead,
    InstanceLossHead,
    MILOutput,
    default_device,
)
from slidemill.workers.training._config import (
    CrossValidation,
    EpochReport,
    FloatArray,
    FoldResult,
    HeadKwargs,
    IntArray,
    TrainConfig,
    TrainedHead,
)
from slidemill.workers.training._splits import (
    bag_loss,
    class_weights,
    fold_seed,
    stratified_folds,
    stratified_split,
)

# --------------------------------------------------------------------------------------------
# reproducibility


REPRODUCIBLE_THREADS = 2
"""torch's intra-op threads while training on CPU. A CPU reduction's result depends on how many
threads split it, so a machine with another core count would train other weights from the same
seed (pretraining differs after three steps with 1 thread against 2); the published figures
were measured with 2."""


@contextmanager
def fixed_threads(n: int = REPRODUCIBLE_THREADS) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block, then restored."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def deterministic(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and CUDA), numpy's and python's global generators, turn on torch's
    deterministic algorithms and cuDNN's deterministic mode, and fix the CPU thread count
    (`fixed_threads`); restore all of it on exit.

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
    with torch.random.fork_rng(devices=devices), fixed_threads():
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


def training_device(config: TrainConfig) -> torch.device:
    """The device `config` trains on: its `device`, else CUDA when available, else CPU."""
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


@dataclass(frozen=True, slots=True)
class _Steps:
    """What every epoch of a training loop shares: the optimiser, the class weights, the share
    of an instance loss, the bag order's generator, and FedProx's anchor (empty without)."""

    optimiser: torch.optim.Optimizer
    weights: torch.Tensor
    mix: float
    order_rng: torch.Generator
    anchor: list[torch.Tensor]
    anchor_mu: float = 0.0


def _steps(
    head: nn.Module, config: TrainConfig, weights: torch.Tensor, seed: int, anchor_mu: float = 0.0
) -> _Steps:
    optimiser_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return _Steps(
        optimiser=optimiser_cls(head.parameters(), lr=config.lr, weight_decay=config.weight_decay),
        weights=weights,
        mix=config.instance_loss_weight if isinstance(head, InstanceLossHead) else 0.0,
        order_rng=torch.Generator().manual_seed(seed),
        anchor=[p.detach().clone() for p in head.parameters()] if anchor_mu > 0 else [],
        anchor_mu=anchor_mu,
    )


def _train_epoch(
    head: nn.Module,
    steps: _Steps,
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    ids: Sequence[str],
    config: TrainConfig,
    where: str,
) -> float:
    """One epoch over `ids`, a bag a step (in `steps.order_rng`'s order when `config.shuffle`);
    the loss is the class-weighted bag loss, mixed with the head's instance loss, plus FedProx's
    proximal term μ/2 ‖w − w₀‖² when there is an anchor. Returns the mean loss; a loss that is not
    finite is a `TrainingError` naming `where` and the slide."""
    device = steps.weights.device
    head.train()
    if config.shuffle:
        order = torch.randperm(len(ids), generator=steps.order_rng).tolist()
    else:
        order = list(range(len(ids)))
    total = 0.0
    for i in order:
        slide_id = ids[i]
        y = int(labels[slide_id])
        x = _bag_tensor(bags[slide_id], device)
        out: MILOutput = head(x)
        loss = bag_loss(out.logits, y, steps.weights)
        if steps.mix > 0.0 and isinstance(head, InstanceLossHead):
            loss = (1.0 - steps.mix) * loss + steps.mix * head.instance_loss(x, y)
        if steps.anchor:
            drift = sum(
                (p - p0).square().sum()
                for p, p0 in zip(head.parameters(), steps.anchor, strict=True)
            )
            loss = loss + 0.5 * steps.anchor_mu * drift
        steps.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        steps.optimiser.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"{where}: the loss became {value} on slide {slide_id}; lower the learning rate"
            )
        total += value
    head.eval()
    return total / len(order)


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
    `config.seed`) fixes initialisation, dropout and bag order. A `FittedInputHead` first fits
    its input standardisation to the training bags (never the validation ones).
    """
    if not train_ids:
        raise TrainingError(f"fold {fold}: no training slides")
    if not val_ids:
        raise TrainingError(f"fold {fold}: no validation slides")
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise TrainingError(f"fold {fold}: slides in both training and validation: {overlap}")
    run_seed = config.seed if seed is None else seed
    device = training_device(config)
    in_dim = check_bags(bags, [*train_ids, *val_ids])
    y_train = np.array([labels[i] for i in train_ids], dtype=np.int64)
    if y_train.min() < 0 or y_train.max() >= n_classes:
        raise TrainingError(f"fold {fold}: labels must lie in [0, {n_classes})")
    w = class_weights(y_train, n_classes) if config.class_weighting else np.ones(n_classes)
    started = time.perf_counter()
    history: list[EpochReport] = []
    with deterministic(run_seed, device):
        head = build_head(config.head, config.head_kwargs, in_dim, n_classes).to(device)
        if isinstance(head, FittedInputHead):
            head.fit_input(_bag_tensor(bags[i], device) for i in train_ids)
        weights = torch.tensor(w, dtype=torch.float32, device=device)
        steps = _steps(head, config, weights, run_seed)
        best_state: dict[str, torch.Tensor] = {}
        best_loss, best_epoch = math.inf, 0
        recent: list[float] = []  # the last `smoothing` validation losses
        # the running mean of the last epochs' weights (SWA); the heads' buffers (their input
        # standardisation) are fixed before training, so the latest are the mean
        averaged = AveragedModel(head) if config.weight_averaging else None
        swa_from = config.max_epochs - config.weight_averaging + 1
        for epoch in range(1, config.max_epochs + 1):
            epoch_start = time.perf_counter()
            train_loss = _train_epoch(
                head, steps, bags, labels, train_ids, config, f"fold {fold}, epoch {epoch}"
            )
            val_loss = _weighted_val_loss(head, bags, val_ids, labels, weights, device)
            if not math.isfinite(val_loss):
                raise TrainingError(
                    f"fold {fold}, epoch {epoch}: the validation loss is {val_loss}; "
                    "lower the learning rate"
                )
            recent = [*recent, val_loss][-config.smoothing :]
            smoothed = sum(recent) / len(recent)
            if epoch >= config.first_decision and smoothed < best_loss:
                best_loss, best_epoch = smoothed, epoch
                if config.weight_averaging == 0:
                    best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            if averaged is not None and epoch >= swa_from:
                averaged.update_parameters(head)
            last = epoch == config.max_epochs or (
                epoch >= config.first_decision
                and epoch - max(best_epoch, config.first_decision) >= config.patience
            )
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
        if averaged is not None:
            if int(averaged.n_averaged) == 0:  # stopped before the averaging window: the last
                averaged.update_parameters(head)
            head.load_state_dict(averaged.module.state_dict())
            best_epoch = len(history)
            best_loss = _weighted_val_loss(head, bags, val_ids, labels, weights, device)
        else:
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


def train_epochs(
    head: nn.Module,
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    ids: Sequence[str],
    weights: Sequence[float],
    config: TrainConfig,
    *,
    epochs: int,
    seed: int,
    anchor_mu: float = 0.0,
) -> float:
    """Train `head` in place for `epochs` epochs over `ids` (one bag a step, in a seeded order
    when `config.shuffle`), with `config`'s optimiser, rate and weight decay, class `weights`
    (C,) and any instance loss; no validation, no early stop: a federated site's local update.

    `anchor_mu` > 0 adds FedProx's proximal term μ/2 ‖w − w₀‖² to every step's loss, w₀ the
    weights `head` came in with. Returns the mean training loss of the last epoch.
    """
    if not ids:
        raise TrainingError("no slides to train on")
    device = next(head.parameters()).device
    with deterministic(seed, device):
        weights_t = torch.tensor(list(weights), dtype=torch.float32, device=device)
        steps = _steps(head, config, weights_t, seed, anchor_mu)
        mean_loss = math.nan
        for epoch in range(1, epochs + 1):
            mean_loss = _train_epoch(head, steps, bags, labels, ids, config, f"epoch {epoch}")
    return mean_loss


def fit_split(
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    rest_ids: Sequence[str],
    n_classes: int,
    config: TrainConfig,
    *,
    seed: int,
    fold: int = 0,
    n_folds: int = 1,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...], TrainedHead]:
    """Train on `rest_ids` as a cross-validation fold does: a stratified `val_fraction` of each
    class (seeded by `seed`) is held back for early stopping and the threshold, the head is
    trained on the others with `seed`. Returns (training ids, validation ids, the head).

    `cross_validate` trains each fold with it, and `train --select auto` each of its fits, so a
    candidate's plain cross-validation there is the one `train` runs."""
    y_rest = np.array([labels[i] for i in rest_ids], dtype=np.int64)
    train_rel, val_rel = stratified_split(y_rest, config.val_fraction, seed)
    train_ids = tuple(rest_ids[i] for i in train_rel)
    val_ids = tuple(rest_ids[i] for i in val_rel)
    trained = train_fold(
        bags,
        labels,
        train_ids,
        val_ids,
        n_classes,
        config,
        fold=fold,
        n_folds=n_folds,
        seed=seed,
        on_epoch=on_epoch,
    )
    return train_ids, val_ids, trained


def _choose_threshold(
    head: nn.Module,
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    val_ids: Sequence[str],
    n_classes: int,
    device: torch.device,
) -> tuple[float | None, str | None]:
    """Youden's-J threshold on P(class 1) over the validation slides (two classes only)."""
    if n_classes != 2:
        return None, None
    y_val = np.array([labels[i] for i in val_ids], dtype=np.int64)
    if np.unique(y_val).shape[0] < 2:
        return None, "the validation slides hold one class only: argmax decides"
    p = predict_probabilities(head, bags, val_ids, device)
    return choose_threshold(y_val == 1, p[:, 1]).value, None


def _held_out(probabilities: FloatArray, y: IntArray) -> tuple[float, float | None]:
    """Mean cross-entropy and AUROC (None when undefined) of held-out predictions."""
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
    device = training_device(config)
    results: list[FoldResult] = []
    oof = np.zeros((len(ids), n_classes), dtype=np.float64)
    for k in range(config.n_folds):
        seed = fold_seed(config.seed, k)
        test_idx = np.flatnonzero(fold_of == k)
        rest_idx = np.flatnonzero(fold_of != k)
        test_ids = tuple(ids[i] for i in test_idx)
        train_ids, val_ids, trained = fit_split(
            bags,
            labels,
            [ids[i] for i in rest_idx],
            n_classes,
            config,
            seed=seed,
            fold=k,
            n_folds=config.n_folds,
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
