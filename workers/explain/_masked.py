"""A head's answer for sub-bags of one slide: the masked forward that every explanation and every
faithfulness curve here is made of.

MIL heads take bags of any size, so a tile that is "absent" is simply removed from the bag: no
baseline image or feature vector is invented for it. What is explained is the slide's log-odds of
the target class t, L = logit_t − log Σ_{k≠t} exp(logit_k) = log(p_t / (1 − p_t)), which every
head defines whatever it does with its logits' offset (ABMIL's two free logits, TopKMIL's class 0
fixed at 0, the ensemble's log mean probability). The empty bag is given zero logits: every
class equally likely, L = −log(C − 1) (0 for two classes).

For the heads whose tiles meet only in a weighted sum (ABMIL and its gated and instance
variants, mean and max pooling, and ensembles of these), removing tiles is done exactly by
masking: their per-tile terms are computed once and many sub-bags pooled in one batched product
(`test_explain.py` checks this against removal tile by tile). Any other head runs once per sub-bag
on the kept tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from slidemill.workers.models import ABMIL, EnsembleMIL, PoolingMIL

_MAX_CELLS = 1 << 22
"""Sub-bags pooled at once are cut so that (sub-bags × tiles) stays under this (16 MiB float32)."""

Pooled = Callable[[torch.Tensor], torch.Tensor]
"""keep (B, N) bool → slide logits (B, C) of the kept tiles (rows with no tile: anything)."""


def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """(…, C) logits → (…) log-odds of class `target`: logit_t − logsumexp of the others."""
    others = torch.cat([logits[..., :target], logits[..., target + 1 :]], dim=-1)
    return logits[..., target] - torch.logsumexp(others, dim=-1)


def empty_log_odds(n_classes: int) -> float:
    """The empty bag's log-odds of any class: zero logits, −log(C − 1)."""
    return -math.log(n_classes - 1)


class MaskedBag:
    """One slide's bag under one head: the target's log-odds of any sub-bag.

    features: (N, D) on the head's device; target: a class index. Calling it with keep (B, N)
    bool gives (B,) float64 log-odds, tiles where keep is False removed from the bag; a row with
    no tile gives the empty bag's value.
    """

    def __init__(
        self, head: nn.Module, features: torch.Tensor, target: int, n_classes: int
    ) -> None:
        if n_classes < 2:
            raise ValueError(f"a slide's log-odds need at least two classes, got {n_classes}")
        if not 0 <= target < n_classes:
            raise ValueError(f"target {target} is not a class index of {n_classes}")
        self.head = head
        self.features = features
        self.target = target
        self.n_classes = n_classes
        self.empty = empty_log_odds(n_classes)
        self.evaluations = 0
        """Sub-bags evaluated so far."""
        with torch.no_grad():
            self._pooled = pooled_forward(head, features)

    @property
    def n_tiles(self) -> int:
        return int(self.features.shape[0])

    @property
    def exact_masking(self) -> bool:
        """Whether sub-bags are pooled by masking (else the head runs on each)."""
        return self._pooled is not None

    def __call__(self, keep: torch.Tensor) -> torch.Tensor:
        keep = torch.as_tensor(keep, dtype=torch.bool, device=self.features.device)
        if keep.ndim != 2 or keep.shape[1] != self.n_tiles:
            raise ValueError(f"keep must be (B, {self.n_tiles}), got {tuple(keep.shape)}")
        self.evaluations += int(keep.shape[0])
        out = torch.full((keep.shape[0],), self.empty, dtype=torch.float64)
        any_kept = keep.any(dim=1)
        rows = torch.nonzero(any_kept).flatten()
        if rows.numel() == 0:
            return out
        with torch.no_grad():
            if self._pooled is not None:
                step = max(1, _MAX_CELLS // max(self.n_tiles, 1))
                parts = [
                    self._pooled(keep[rows[i : i + step]]) for i in range(0, rows.numel(), step)
                ]
                logits = torch.cat(parts)
            else:
                logits = torch.stack(
                    [self.head(self.features[keep[int(r)]]).logits for r in rows.tolist()]
                )
        out[rows] = log_odds(logits.double(), self.target).cpu()
        return out

    def full(self, keep: torch.Tensor | None = None) -> float:
        """The whole bag's log-odds: every tile, or those of `keep` (N,) bool."""
        row = torch.ones(self.n_tiles, dtype=torch.bool) if keep is None else keep.bool()
        return float(self(row.reshape(1, -1))[0])


def removed_forward(head: nn.Module, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The reference: the head run on each row's kept tiles; keep (B, N) → logits (B, C). Every
    row must keep a tile."""
    with torch.no_grad():
        return torch.stack([head(features[row]).logits for row in keep.bool()])


def pooled_forward(head: nn.Module, features: torch.Tensor) -> Pooled | None:
    """Masked pooling for the heads that allow it exactly (see the module's docstring), with
    every per-tile term computed once from `features` (N, D); None for any other head."""
    if isinstance(head, ABMIL):
        return _abmil(head, features)
    if isinstance(head, PoolingMIL):
        return _pooling(head, features)
    if isinstance(head, EnsembleMIL):
        members = [pooled_forward(m, features) for m in head.members]
        if any(m is None for m in members):
            return None
        return _ensemble([m for m in members if m is not None])
    return None


def _abmil(head: ABMIL, features: torch.Tensor) -> Pooled:
    # ABMIL.forward with the softmax over the kept tiles only: h_i and the attention scores are
    # per tile, and z = Σ_kept a_i h_i
    h = head.embed(features)  # (N, hidden)
    a = head.attention_v(h)
    if head.attention_u is not None:
        a = a * head.attention_u(h)
    scores = head.attention_w(a).squeeze(-1)  # (N,)

    def pooled(keep: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(scores.masked_fill(~keep, -torch.inf), dim=1)  # (B, N)
        weights = torch.nan_to_num(weights, nan=0.0)  # a row with no tile
        out: torch.Tensor = head.classifier(weights @ h)
        return out

    return pooled


def _pooling(head: PoolingMIL, features: torch.Tensor) -> Pooled:
    tile_logits = head.mlp(features)  # (N, C)

    def pooled(keep: torch.Tensor) -> torch.Tensor:
        if head.pooling == "mean":
            w = keep.to(tile_logits.dtype)
            return (w @ tile_logits) / w.sum(dim=1, keepdim=True).clamp_min(1.0)
        masked = tile_logits.unsqueeze(0).masked_fill(~keep.unsqueeze(-1), -torch.inf)
        return masked.amax(dim=1)

    return pooled


def _ensemble(members: list[Pooled]) -> Pooled:
    # EnsembleMIL.forward: the log of the members' mean probability
    log_k = math.log(len(members))

    def pooled(keep: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([torch.log_softmax(m(keep), dim=-1) for m in members])
        return torch.logsumexp(stacked, dim=0) - log_k

    return pooled
