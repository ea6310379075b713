"""MIL heads: the `MILHead` protocol, and the registered implementations.

Every head maps one bag, features (N, in_dim), to a `MILOutput` and is registered in `HEADS` under
a factory `(in_dim, n_classes, **hyper-parameters)`; the hyper-parameters are plain ints, floats,
strs and bools because a bundle's manifest stores them in `head_kwargs`. This module holds the
attention-MIL heads of Ilse et al. and the pooling baselines; CLAM (`_clam.py`) and TransMIL
(`_transmil.py`) register themselves from their own modules, which the package imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional

from slidemill.workers.models._registry import Registry


@dataclass(frozen=True, slots=True)
class MILOutput:
    """What a MIL head returns for one slide (a bag of N tiles, C classes)."""

    logits: torch.Tensor
    """Slide logits, shape (C,)."""
    attention: torch.Tensor
    """Attention weights over tiles, softmax-normalised, shape (N,)."""
    tile_logits: torch.Tensor
    """Per-tile class logits from the same classifier, shape (N, C)."""
    attention_all: torch.Tensor | None = None
    """Every attention branch, shape (K, N), each row softmax-normalised, for heads with several
    branches (CLAM-MB: one per class, K = C); None for single-branch heads."""


@runtime_checkable
class MILHead(Protocol):
    """forward: features (N, in_dim) → MILOutput."""

    def __call__(self, features: torch.Tensor) -> MILOutput: ...


@runtime_checkable
class InstanceLossHead(Protocol):
    """A head with an instance-level auxiliary loss for training (CLAM's clustering loss)."""

    def instance_loss(self, features: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        """features (N, in_dim), the slide's class index → a scalar loss."""
        ...


@runtime_checkable
class FittedInputHead(Protocol):
    """A head that standardises its input with statistics of the training tiles: training calls
    `fit_input` once, before the first step, and the statistics travel in the state dict."""

    def fit_input(self, bags: Iterable[torch.Tensor]) -> None:
        """bags: every training slide's features, each (N_i, in_dim), visited once (a cohort's
        features need not fit in memory together)."""
        ...

    def input_moments(self, bags: Iterable[torch.Tensor]) -> InputMoments:
        """The sums `fit_input` fits from, so sites can add theirs (federated training)."""
        ...

    def set_input(self, moments: InputMoments) -> None:
        """Fit the standardisation from sums: `fit_input(b)` is `set_input(input_moments(b))`."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class InputMoments:
    """Count, sum and sum of squares of the (transformed) training tiles' features, in float64:
    what a head's input standardisation is fitted from, and all of it that leaves a site
    (`eq=False`: arrays)."""

    n: int
    """Tiles summed."""
    total: NDArray[np.float64]
    """Σ x. Shape: in_dim."""
    squares: NDArray[np.float64]
    """Σ x². Shape: in_dim."""

    def __add__(self, other: InputMoments) -> InputMoments:
        if self.total.shape != other.total.shape:
            raise ValueError(f"moments of widths {self.total.shape} and {other.total.shape}")
        return InputMoments(
            self.n + other.n, self.total + other.total, self.squares + other.squares
        )


def check_bag(features: torch.Tensor, in_dim: int) -> None:
    """Refuse anything but one non-empty bag (N>0, in_dim): heads take one slide at a time."""
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != in_dim:
        raise ValueError(f"expected (N>0, {in_dim}) features, got {tuple(features.shape)}")


HEADS: Registry[nn.Module] = Registry("MIL head")


class ABMIL(nn.Module):
    """Attention MIL (Ilse, Tomczak & Welling, ICML 2018), eq. 8, or eq. 9 when `gated`.

    h_i = ReLU(W_1 x_i);  a_i ∝ exp(wᵀ tanh(V h_i)), gated: exp(wᵀ (tanh(V h_i) ⊙ sigm(U h_i)));
    z = Σ a_i h_i;  logits = W_c z. The same classifier applied to each h_i gives per-tile class
    scores.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C)).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh())
        self.attention_u = (
            nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Sigmoid()) if gated else None
        )
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, features: torch.Tensor) -> MILOutput:
        check_bag(features, self.in_dim)
        h = self.embed(features)  # (N, hidden)
        a = self.attention_v(h)  # (N, attention)
        if self.attention_u is not None:
            a = a * self.attention_u(h)
        attention = torch.softmax(self.attention_w(a).squeeze(-1), dim=0)  # (N,)
        z = attention @ h  # (hidden,)
        return MILOutput(
            logits=self.classifier(z), attention=attention, tile_logits=self.classifier(h)
        )


class GatedABMIL(ABMIL):
    """Gated attention MIL (eq. 9): `ABMIL` with the sigmoid gate (`train`'s default head is
    `topk_linear`; a new untrained bundle's is this one).

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C)).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(in_dim, n_classes, hidden_dim, attention_dim, dropout, gated=True)


class InstanceABMIL(ABMIL):
    """`ABMIL` with CLAM-style instance-level supervision from its own attention (Lu et al.,
    2021), on the classifier the tile scores come from: in a bag of class y ≠ 0 the k most
    attended tiles are pseudo-labelled y and the k least attended class 0 (the negative class);
    in a bag of class 0 the k most attended tiles are class 0 (no tile of a negative slide is
    lesion). The same weights as `ABMIL`: a bundle rebuilds it from its head kwargs.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C)).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = False,
        instance_k: int = 8,
    ) -> None:
        super().__init__(in_dim, n_classes, hidden_dim, attention_dim, dropout, gated)
        if instance_k < 1:
            raise ValueError(f"instance_k must be at least 1, got {instance_k}")
        self.instance_k = instance_k

    def instance_loss(self, features: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the tile classifier on the pseudo-labelled tiles; a scalar.
        features (N, in_dim); k = min(instance_k, N // 2) (at least 1). The selection is not
        differentiated."""
        y = int(label)
        h = self.embed(features)
        a = self.attention_v(h)
        if self.attention_u is not None:
            a = a * self.attention_u(h)
        scores = self.attention_w(a).squeeze(-1).detach()
        k = max(1, min(self.instance_k, h.shape[0] // 2))
        top = torch.topk(scores, k).indices
        if y == 0:
            chosen, targets = top, torch.zeros(k, dtype=torch.long, device=h.device)
        else:
            bottom = torch.topk(-scores, k).indices
            chosen = torch.cat([top, bottom])
            targets = torch.cat([torch.full((k,), y), torch.zeros(k)]).long().to(h.device)
        return functional.cross_entropy(self.classifier(h[chosen]), targets)


def _abmil_head(
    in_dim: int,
    n_classes: int,
    hidden_dim: int,
    attention_dim: int,
    dropout: float,
    gated: bool,
    instance_k: int,
) -> nn.Module:
    if instance_k:
        return InstanceABMIL(
            in_dim, n_classes, hidden_dim, attention_dim, dropout, gated, instance_k
        )
    if gated:
        return GatedABMIL(in_dim, n_classes, hidden_dim, attention_dim, dropout)
    return ABMIL(in_dim, n_classes, hidden_dim, attention_dim, dropout)


@HEADS.register("abmil_gated")
def _abmil_gated(
    in_dim: int,
    n_classes: int,
    hidden_dim: int = 256,
    attention_dim: int = 128,
    dropout: float = 0.25,
    instance_k: int = 0,
) -> nn.Module:
    """`instance_k` > 0: with instance-level supervision (`InstanceABMIL`)."""
    return _abmil_head(in_dim, n_classes, hidden_dim, attention_dim, dropout, True, instance_k)


@HEADS.register("abmil")
def _abmil(
    in_dim: int,
    n_classes: int,
    hidden_dim: int = 256,
    attention_dim: int = 128,
    dropout: float = 0.25,
    instance_k: int = 0,
) -> nn.Module:
    """`instance_k` > 0: with instance-level supervision (`InstanceABMIL`)."""
    return _abmil_head(in_dim, n_classes, hidden_dim, attention_dim, dropout, False, instance_k)


class PoolingMIL(nn.Module):
    """Instance-level baseline: an MLP scores every tile, a fixed pooling gives the slide.

    tile_logits = W_2 ReLU(W_1 x_i);  "mean": logits = mean_i tile_logits;  "max": logits_c =
    max_i tile_logits[i, c], class by class.

    Attention is what the pooling actually weighs: uniform (1/N) for mean; for max, the tiles
    that attain the maximum of the predicted class, sharing 1 equally (one tile unless tied).
    Max pooling takes its score, and its gradient, from that tile alone, so an indicator is the
    faithful explanation; a softmax over tile logits would invent a temperature.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C)).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        pooling: str = "mean",
        hidden_dim: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
        self.in_dim = in_dim
        self.pooling = pooling
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, n_classes),
        )

    def forward(self, features: torch.Tensor) -> MILOutput:
        check_bag(features, self.in_dim)
        tile_logits = self.mlp(features)  # (N, C)
        n = tile_logits.shape[0]
        if self.pooling == "mean":
            logits = tile_logits.mean(dim=0)
            attention = torch.full((n,), 1.0 / n, dtype=tile_logits.dtype, device=features.device)
        else:
            logits = tile_logits.amax(dim=0)
            predicted = int(torch.argmax(logits))
            at_max = (tile_logits[:, predicted] == logits[predicted]).to(tile_logits.dtype)
            attention = (at_max / at_max.sum()).detach()
        return MILOutput(logits=logits, attention=attention, tile_logits=tile_logits)


@HEADS.register("mean_pool")
def _mean_pool(
    in_dim: int, n_classes: int, hidden_dim: int = 256, dropout: float = 0.25
) -> nn.Module:
    return PoolingMIL(in_dim, n_classes, "mean", hidden_dim, dropout)


@HEADS.register("max_pool")
def _max_pool(
    in_dim: int, n_classes: int, hidden_dim: int = 256, dropout: float = 0.25
) -> nn.Module:
    return PoolingMIL(in_dim, n_classes, "max", hidden_dim, dropout)


_TOPK_GAIN = 100.0
"""`TopKMIL`'s weights are in units of 1/this: a learning-rate multiplier carried by the head."""
_TOPK_INIT = 1e-3
"""Spread of `TopKMIL`'s random start, in those units (0.1 in the scores' own)."""


class TopKMIL(nn.Module):
    """Instance MIL for small cohorts: linear scores per tile on features taken relative to
    the slide's own median tile and standardised, a slide's evidence for each class the mean of
    its `k` tiles that show most of it, averaged over `scorers` scorers from random starts.

    Class 0 is the negative class (as for CLAM's instance loss). Scorer r gives tile i the
    scores s_r = W_r ((x_i - m - μ) / σ) + b_r for classes 1 … C-1, m the bag's per-feature
    median, μ, σ the mean and spread of the training tiles so centred (`fit_input`; identity
    until then). The slide's logit of class c ≥ 1 is the mean over scorers of the mean of each
    one's k highest s_r,c; class 0's is 0. A tile's logits are (0, mean_r s_r).

    Why: a lesion of 0.1–2% of the tissue is a handful of tiles among hundreds. Attention over
    an MLP embedding (ABMIL) has thousands of weights to fit from 8–16 positive slides and finds
    slide-specific directions instead; one weight per feature, fed only by each slide's few
    most suspect tiles, does not. Standardising makes one learning rate and weight decay fit
    features of natural scales as different as `handcrafted`'s (0.002 to 0.7). The mean of k
    tiles rather than the maximum keeps the gradient off a single outlier tile. Each slide's
    stain and scan move all its tiles alike, and a lesion is what stands out from the slide's
    own tissue: with the median tile as the reference, 8–16 positive slides need not teach the
    head every slide's colour. Which tiles a scorer picks first decides where it ends up;
    with a few slides, one start is luck (docs/learning-studies.md), the mean of
    several is not.

    The weights are kept in units of 1/`_TOPK_GAIN`: `train`'s one learning rate (5e-4, set
    for ABMIL's embedding) then moves these few weights as far per step as 0.05 would, the rate
    at which they learn in the 40 epochs of the default schedule; decoupled weight decay is
    unaffected.

    Attention: 1/k on each of the k tiles of highest mean score for the most likely class other
    than 0. forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C)).
    """

    def __init__(self, in_dim: int, n_classes: int, k: int = 3, scorers: int = 5) -> None:
        super().__init__()
        if k < 1 or scorers < 1:
            raise ValueError(f"k and scorers must be at least 1, got {k} and {scorers}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.in_dim, self.k, self.scorers, self.n_out = in_dim, k, scorers, n_classes - 1
        self.input_mean: torch.Tensor
        self.input_std: torch.Tensor
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.score = nn.Linear(in_dim, scorers * self.n_out)
        nn.init.normal_(self.score.weight, std=_TOPK_INIT)
        nn.init.zeros_(self.score.bias)

    def fit_input(self, bags: Iterable[torch.Tensor]) -> None:
        self.set_input(self.input_moments(bags))

    def input_moments(self, bags: Iterable[torch.Tensor]) -> InputMoments:
        # one bag at a time, sums in float64: the training tiles are never all in memory
        n, total = 0, torch.zeros(self.in_dim, dtype=torch.float64)
        squares = torch.zeros(self.in_dim, dtype=torch.float64)
        for bag in bags:
            check_bag(bag, self.in_dim)
            x = _centred(bag.detach().to("cpu", torch.float64))
            n += x.shape[0]
            total += x.sum(0)
            squares += x.square().sum(0)
        return InputMoments(n, total.numpy(), squares.numpy())

    def set_input(self, moments: InputMoments) -> None:
        if moments.n == 0:
            raise ValueError("fit_input needs at least one bag")
        if moments.total.shape != (self.in_dim,):
            raise ValueError(f"moments of width {moments.total.shape}, the head's is {self.in_dim}")
        n = moments.n
        total = torch.from_numpy(np.asarray(moments.total, dtype=np.float64))
        squares = torch.from_numpy(np.asarray(moments.squares, dtype=np.float64))
        mean = total / n
        var = (squares - n * mean.square()) / max(n - 1, 1)
        std = var.clamp_min(0.0).sqrt() if n > 1 else torch.ones_like(mean)
        # a constant feature keeps unit spread: it carries nothing, and must not blow up
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.input_mean.copy_(mean.to(self.input_mean))
        self.input_std.copy_(std.to(self.input_std))

    def forward(self, features: torch.Tensor) -> MILOutput:
        check_bag(features, self.in_dim)
        n = features.shape[0]
        x = (_centred(features) - self.input_mean) / self.input_std
        s = (_TOPK_GAIN * self.score(x)).view(n, self.scorers, self.n_out)
        k = min(self.k, n)
        evidence = s.topk(k, dim=0).values.mean(dim=0).mean(dim=0)  # (C - 1,)
        logits = torch.cat([evidence.new_zeros(1), evidence])
        mean_score = s.mean(dim=1)  # (N, C - 1)
        tile_logits = torch.cat([s.new_zeros(n, 1), mean_score], dim=1)
        strongest = int(torch.argmax(evidence))
        attention = torch.zeros(n, dtype=s.dtype, device=features.device)
        attention[mean_score[:, strongest].topk(k).indices] = 1.0 / k
        return MILOutput(logits=logits, attention=attention, tile_logits=tile_logits)


def _centred(features: torch.Tensor) -> torch.Tensor:
    """A bag's features minus its per-feature median tile: (N, D) → (N, D)."""
    return features - features.median(dim=0).values


@HEADS.register("topk_linear")
def _topk_linear(in_dim: int, n_classes: int, k: int = 3, scorers: int = 5) -> nn.Module:
    return TopKMIL(in_dim, n_classes, k, scorers)
