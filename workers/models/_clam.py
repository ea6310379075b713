"""CLAM heads (Lu et al., Nature Biomedical Engineering 2021) and import of CLAM checkpoints.

CLAM is gated attention MIL over a 512-d tile embedding with one attention branch (single-branch,
"clam_sb") or one per class (multi-branch, "clam_mb"), plus per-class instance classifiers trained
by an auxiliary clustering loss on the most and least attended tiles.

`import_clam_checkpoint` turns a state dict saved by mahmoodlab/CLAM (`torch.save(model.
state_dict())`) into a slidemill bundle. CLAM's parameter names, which the importer maps onto the
modules here, are (K = 1 attention branch for SB, C for MB; [L, H, D] = [in_dim, 512, 256] for
"small", [in_dim, 512, 384] for "big"):

    attention_net.0.{weight,bias}                (H, L), (H,)    tile embedding, then ReLU
    attention_net.3.attention_a.0.{weight,bias}  (D, H), (D,)    tanh branch
    attention_net.3.attention_b.0.{weight,bias}  (D, H), (D,)    sigmoid gate
    attention_net.3.attention_c.{weight,bias}    (K, D), (K,)    attention scores
    classifiers.{weight,bias}                    (C, H), (C,)    SB bag classifier
    classifiers.{c}.{weight,bias}                (1, H), (1,)    MB: one per class
    instance_classifiers.{c}.{weight,bias}       (2, H), (2,)    one per class

Checkpoints from CLAM's multi-GPU code carry `module.` in front of every key or after
`attention_net` (its `relocate()` wrapped the attention network in DataParallel); the smooth-SVM
instance loss stores a `instance_loss_fn.labels` buffer. Both are handled as CLAM's own
`eval_utils.initiate_model` does.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from slidemill.workers.models._heads import HEADS, MILOutput, check_bag

log = logging.getLogger(__name__)

CLAM_SIZES: dict[str, tuple[int, int]] = {"small": (512, 256), "big": (512, 384)}
"""CLAM's `size_arg`: (embedding width H, attention width D); the input width L is the encoder's."""

ClamType = Literal["clam_sb", "clam_mb"]
ClamSize = Literal["small", "big"]


def smooth_top1_svm_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, tau: float = 1.0
) -> torch.Tensor:
    """Smooth top-1 multi-class SVM loss (Berrada, Zisserman & Kumar, ICLR 2018), batch mean.

    ℓ(s, y) = τ log Σ_j exp((α·[j ≠ y] + s_j − s_y) / τ); logits (B, K), target (B,) → scalar.
    CLAM's published instance loss (α = τ = 1).
    """
    margin = alpha * (1.0 - functional.one_hot(target, logits.shape[1]).to(logits.dtype))
    shifted = (logits + margin - logits.gather(1, target[:, None])) / tau
    return (tau * torch.logsumexp(shifted, dim=1)).mean()


class CLAM(nn.Module):
    """Clustering-constrained attention MIL (CLAM); the shared body of the SB and MB heads.

    h_i = ReLU(W_1 x_i);  s_ik = w_kᵀ (tanh(V h_i) ⊙ sigm(U h_i));  a_k = softmax_i(s_ik);
    M_k = Σ_i a_ik h_i. Single-branch (K = 1): logits = W_c M_1. Multi-branch (K = C): logit_c =
    w_cᵀ M_c + b_c, each class pooling with its own attention. Per-tile logits apply the same bag
    classifier to each h_i: W_c h_i (SB), w_cᵀ h_i + b_c (MB).

    Dropout (p = `dropout`) follows the embedding and both attention branches, where CLAM puts it.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C),
    attention_all (C, N) for MB). MB's `attention` is the predicted class's branch.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        multi_branch: bool,
        size: str = "small",
        dropout: float = 0.25,
        k_sample: int = 8,
        subtyping: bool = False,
        instance_loss: str = "svm",
    ) -> None:
        super().__init__()
        if size not in CLAM_SIZES:
            raise ValueError(f"CLAM size must be one of {sorted(CLAM_SIZES)}, got {size!r}")
        if instance_loss not in ("svm", "ce"):
            raise ValueError(f"instance_loss must be 'svm' or 'ce', got {instance_loss!r}")
        if k_sample < 1:
            raise ValueError(f"k_sample must be at least 1, got {k_sample}")
        hidden, attention_dim = CLAM_SIZES[size]
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.multi_branch = multi_branch
        self.k_sample = k_sample
        self.subtyping = subtyping
        self.instance_loss_kind = instance_loss
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention_dim)
        self.attention_u = nn.Linear(hidden, attention_dim)
        self.attention_w = nn.Linear(attention_dim, n_classes if multi_branch else 1)
        self.attention_dropout = nn.Dropout(dropout)
        # MB's C separate (H → 1) bag classifiers are the rows of one (H → C) layer
        self.classifier = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))

    def attend(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (N, in_dim) → embeddings h (N, H) and attention (K, N), rows summing to 1."""
        check_bag(features, self.in_dim)
        h = self.embed(features)
        gated = self.attention_dropout(torch.tanh(self.attention_v(h))) * self.attention_dropout(
            torch.sigmoid(self.attention_u(h))
        )
        scores = self.attention_w(gated).transpose(0, 1)  # (K, N)
        return h, torch.softmax(scores, dim=1)

    def forward(self, features: torch.Tensor) -> MILOutput:
        h, attention = self.attend(features)
        pooled = attention @ h  # (K, H)
        tile_logits = self.classifier(h)  # (N, C)
        if not self.multi_branch:
            return MILOutput(
                logits=self.classifier(pooled[0]), attention=attention[0], tile_logits=tile_logits
            )
        logits = (pooled * self.classifier.weight).sum(dim=1) + self.classifier.bias
        predicted = int(torch.argmax(logits))
        return MILOutput(
            logits=logits,
            attention=attention[predicted],
            tile_logits=tile_logits,
            attention_all=attention,
        )

    def instance_loss(self, features: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
        """CLAM's instance-level clustering loss for one bag of class `label`; a scalar.

        For the bag's own class c, the k most attended tiles (branch c for MB, the only branch
        for SB) are pseudo-labelled positive and the k least attended negative for instance
        classifier c. With `subtyping` (mutually exclusive classes), every other class's k most
        attended tiles are also negatives for that class's classifier, and the sum is averaged
        over classes. The selection is not differentiated; the loss trains the embedding and the
        instance classifiers. k = min(k_sample, N) so that small bags still work.
        """
        index = int(label)
        if not 0 <= index < self.n_classes:
            raise ValueError(f"label must be in [0, {self.n_classes}), got {index}")
        h, attention = self.attend(features)
        k = min(self.k_sample, h.shape[0])
        total = h.new_zeros(())
        for c, classifier in enumerate(self.instance_classifiers):
            branch = attention[c if self.multi_branch else 0]
            if c == index:
                top = torch.topk(branch, k).indices
                bottom = torch.topk(-branch, k).indices
                instances = torch.cat([h[top], h[bottom]])
                targets = torch.cat([h.new_ones(k), h.new_zeros(k)]).long()
            elif self.subtyping:
                instances = h[torch.topk(branch, k).indices]
                targets = h.new_zeros(k).long()
            else:
                continue
            total = total + self._instance_criterion(classifier(instances), targets)
        return total / self.n_classes if self.subtyping else total

    def _instance_criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.instance_loss_kind == "svm":
            return smooth_top1_svm_loss(logits, targets)
        return functional.cross_entropy(logits, targets)


class CLAMSingleBranch(CLAM):
    """CLAM-SB: one attention branch shared by all classes.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C)).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        size: str = "small",
        dropout: float = 0.25,
        k_sample: int = 8,
        subtyping: bool = False,
        instance_loss: str = "svm",
    ) -> None:
        super().__init__(
            in_dim,
            n_classes,
            multi_branch=False,
            size=size,
            dropout=dropout,
            k_sample=k_sample,
            subtyping=subtyping,
            instance_loss=instance_loss,
        )


class CLAMMultiBranch(CLAM):
    """CLAM-MB: one attention branch and one bag classifier per class.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,) of the predicted class,
    tile_logits (N, C), attention_all (C, N)).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        size: str = "small",
        dropout: float = 0.25,
        k_sample: int = 8,
        subtyping: bool = False,
        instance_loss: str = "svm",
    ) -> None:
        super().__init__(
            in_dim,
            n_classes,
            multi_branch=True,
            size=size,
            dropout=dropout,
            k_sample=k_sample,
            subtyping=subtyping,
            instance_loss=instance_loss,
        )


@HEADS.register("clam_sb")
def _clam_sb(
    in_dim: int,
    n_classes: int,
    size: str = "small",
    dropout: float = 0.25,
    k_sample: int = 8,
    subtyping: bool = False,
    instance_loss: str = "svm",
) -> nn.Module:
    return CLAMSingleBranch(in_dim, n_classes, size, dropout, k_sample, subtyping, instance_loss)


@HEADS.register("clam_mb")
def _clam_mb(
    in_dim: int,
    n_classes: int,
    size: str = "small",
    dropout: float = 0.25,
    k_sample: int = 8,
    subtyping: bool = False,
    instance_loss: str = "svm",
) -> nn.Module:
    return CLAMMultiBranch(in_dim, n_classes, size, dropout, k_sample, subtyping, instance_loss)
