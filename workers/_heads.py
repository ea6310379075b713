"""MIL heads: the `MILHead` protocol, and the registered implementations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from workers._registry import Registry


@dataclass(frozen=True, slots=True)
class MILOutput:
    """What a MIL head returns for one slide (a bag of N tiles, C classes)."""

    logits: torch.Tensor
    """Slide logits, shape (C,)."""
    attention: torch.Tensor
    """Attention weights over tiles, softmax-normalised, shape (N,)."""
    tile_logits: torch.Tensor
    """Per-tile class logits from the same classifier, shape (N, C)."""


@runtime_checkable
class MILHead(Protocol):
    """forward: features (N, in_dim) → MILOutput."""

    def __call__(self, features: torch.Tensor) -> MILOutput: ...


HEADS: Registry[nn.Module] = Registry("MIL head")


class GatedABMIL(nn.Module):
    """Gated attention MIL (Ilse, Tomczak & Welling, ICML 2018, eq. 9).

    h_i = ReLU(W_1 x_i);  a_i ∝ exp(wᵀ (tanh(V h_i) ⊙ sigm(U h_i)));  z = Σ a_i h_i;
    logits = W_c z. The same classifier applied to each h_i gives per-tile class scores.

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
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Sigmoid())
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, features: torch.Tensor) -> MILOutput:
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"expected (N>0, D) features, got {tuple(features.shape)}")
        h = self.embed(features)  # (N, hidden)
        scores = self.attention_w(self.attention_v(h) * self.attention_u(h)).squeeze(-1)  # (N,)
        attention = torch.softmax(scores, dim=0)
        z = attention @ h  # (hidden,)
        return MILOutput(
            logits=self.classifier(z), attention=attention, tile_logits=self.classifier(h)
        )


@HEADS.register("abmil_gated")
def _abmil_gated(
    in_dim: int,
    n_classes: int,
    hidden_dim: int = 256,
    attention_dim: int = 128,
    dropout: float = 0.25,
) -> nn.Module:
    return GatedABMIL(in_dim, n_classes, hidden_dim, attention_dim, dropout)
