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
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional

from schemas import ModelManifest
from workers._bundle import encoder_width, file_sha256, save_bundle
from workers._encoders import ENCODERS
from workers._heads import HEADS, MILOutput, check_bag
from workers.errors import ModelBundleError

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


# ---------------------------------------------------------------------------------------------
# Checkpoint import

_PREFIX = "attention_net.3."


def _clean_key(key: str) -> str | None:
    """A CLAM key without DataParallel's `module.`; None for the loss's non-weight buffer."""
    if key.startswith("module."):
        key = key[len("module.") :]
    if key.startswith("instance_loss_fn."):
        return None
    return key.replace("attention_net.module.", "attention_net.", 1)


def expected_clam_keys(clam_type: str, n_classes: int) -> set[str]:
    """The parameter names of a gated CLAM model with `n_classes` classes."""
    keys = {
        f"{name}.{p}"
        for name in (
            "attention_net.0",
            f"{_PREFIX}attention_a.0",
            f"{_PREFIX}attention_b.0",
            f"{_PREFIX}attention_c",
        )
        for p in ("weight", "bias")
    }
    if clam_type == "clam_sb":
        keys |= {"classifiers.weight", "classifiers.bias"}
    else:
        keys |= {f"classifiers.{c}.{p}" for c in range(n_classes) for p in ("weight", "bias")}
    keys |= {f"instance_classifiers.{c}.{p}" for c in range(n_classes) for p in ("weight", "bias")}
    return keys


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A file's named tensors (torch.save'd, tensors only, never pickled code; or safetensors).

    A training checkpoint that wraps the state dict under "state_dict" is unwrapped.
    """
    if not path.is_file():
        raise ModelBundleError(f"{path}: no such {what} file")
    raw: object
    try:
        if path.suffix == ".safetensors":
            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise ModelBundleError(
            f"{path}: not a loadable {what} ({type(err).__name__}: {first_line})"
        ) from err
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise ModelBundleError(f"{path}: expected a state dict of named tensors")
    return dict(raw)


def read_clam_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Load a CLAM state dict with its keys cleaned (DataParallel's `module.`, loss buffers)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in _read_state_dict(checkpoint, "CLAM checkpoint").items():
        clean = _clean_key(key)
        if clean is not None:
            state[clean] = value
    return state


def _infer_n_classes(state: Mapping[str, torch.Tensor], clam_type: str) -> int | None:
    if clam_type == "clam_sb" and "classifiers.weight" in state:
        return int(state["classifiers.weight"].shape[0])
    pattern = re.compile(r"(?:instance_classifiers|classifiers)\.(\d+)\.weight")
    indices = [int(m.group(1)) for k in state if (m := pattern.fullmatch(k))]
    return max(indices) + 1 if indices else None


def _map_onto_head(state: Mapping[str, torch.Tensor], clam_type: str) -> dict[str, torch.Tensor]:
    """CLAM's keys → `CLAM`'s; MB's per-class classifiers become the rows of one layer."""
    n_classes = _infer_n_classes(state, clam_type) or 0
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in (
        ("embed.0", "attention_net.0"),
        ("attention_v", f"{_PREFIX}attention_a.0"),
        ("attention_u", f"{_PREFIX}attention_b.0"),
        ("attention_w", f"{_PREFIX}attention_c"),
    ):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state[f"{theirs}.{p}"]
    for p in ("weight", "bias"):
        if clam_type == "clam_sb":
            out[f"classifier.{p}"] = state[f"classifiers.{p}"]
        else:
            out[f"classifier.{p}"] = torch.cat(
                [state[f"classifiers.{c}.{p}"] for c in range(n_classes)]
            )
        for c in range(n_classes):
            out[f"instance_classifiers.{c}.{p}"] = state[f"instance_classifiers.{c}.{p}"]
    return {k: v.to(torch.float32) for k, v in out.items()}


def load_encoder_weights(encoder: nn.Module, path: Path) -> int:
    """Fill `encoder` from a local state dict file (torch or safetensors); returns keys ignored.

    Keys may carry DataParallel's `module.` and may lack the encoder's wrapper prefix (a plain
    torchvision ResNet-50 file fits `resnet50_trunc`); every encoder tensor must be supplied with
    its shape, and extra tensors (such a file's layer4 and fc) are ignored.
    """
    raw = _read_state_dict(path, "encoder weights")
    given = {k.removeprefix("module."): v for k, v in raw.items()}
    wanted = encoder.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix in {"", *(k.split(".", 1)[0] + "." for k in wanted)}:
        fitted = {
            k: given[k.removeprefix(prefix)]
            for k in wanted
            if k.startswith(prefix) and k.removeprefix(prefix) in given
        }
        if len(fitted) > len(best):
            best = fitted
    missing = sorted(set(wanted) - set(best))
    wrong = sorted(k for k, v in best.items() if v.shape != wanted[k].shape)
    if missing or wrong:
        raise ModelBundleError(
            f"{path}: does not fit encoder {type(encoder).__name__}: "
            f"{len(missing)} tensors missing ({_few(missing)}), "
            f"{len(wrong)} of the wrong shape ({_few(wrong)})"
        )
    encoder.load_state_dict(best, strict=True)
    return len(given) - len(best)


def _few(keys: list[str], n: int = 6) -> str:
    """Up to n names for a one-line message; no brackets, which rich would take for markup."""
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _check_arguments(
    clam_type: str, size: str, names: tuple[str, ...], input_mpp: float, tile_px: int
) -> None:
    """Usage errors, before the checkpoint is read (ValueError: the caller's mistake)."""
    if clam_type not in ("clam_sb", "clam_mb"):
        raise ValueError(f"CLAM type must be 'clam_sb' or 'clam_mb', got {clam_type!r}")
    if size not in CLAM_SIZES:
        raise ValueError(f"CLAM size must be 'small' or 'big', got {size!r}")
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"need two or more distinct, non-empty class names, got {list(names)}")
    if input_mpp <= 0 or tile_px < 16:
        raise ValueError(f"need mpp > 0 and tile px >= 16, got {input_mpp} and {tile_px}")


def import_clam_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    clam_type: ClamType,
    size: ClamSize,
    class_names: tuple[str, ...] | list[str],
    encoder: str = "resnet50_trunc",
    encoder_kwargs: Mapping[str, int | float | str | bool] | None = None,
    encoder_weights: Path | None = None,
    input_mpp: float = 0.5,
    tile_px: int = 224,
    dropout: float = 0.25,
    k_sample: int = 8,
    subtyping: bool = False,
    instance_loss: str = "svm",
) -> ModelManifest:
    """Write a slidemill bundle from a CLAM checkpoint (a gated CLAM-SB or -MB state dict).

    The number of classes, the input width and the attention width are read from the tensors
    and checked against `class_names`, `size` and the encoder's feature width. CLAM checkpoints
    hold no encoder: `encoder` must be the one whose features the model was trained on (CLAM's
    default is `resnet50_trunc` at 20× ≈ 0.5 µm/px, 224-px inputs), and its weights come from
    `encoder_weights`, a local state dict; without one the encoder is randomly initialised and
    the bundle is only good for plumbing checks. `dropout`, `k_sample`, `subtyping` and
    `instance_loss` are the head's training settings, recorded for fine-tuning.
    """
    names = tuple(class_names)
    _check_arguments(clam_type, size, names, input_mpp, tile_px)
    state = read_clam_state(checkpoint)

    n_classes = _infer_n_classes(state, clam_type) or len(names)
    expected = expected_clam_keys(clam_type, n_classes)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        hint = ""
        other = "clam_mb" if clam_type == "clam_sb" else "clam_sb"
        if not expected_clam_keys(other, n_classes) ^ set(state):
            hint = f"; it looks like a {other} checkpoint (--type {other})"
        elif any(".module." in k for k in unexpected):
            hint = "; ungated CLAM attention (Attn_Net) is not supported"
        raise ModelBundleError(
            f"{checkpoint}: not a gated {clam_type} checkpoint: missing keys: {_few(missing)}; "
            f"unexpected keys: {_few(unexpected)}{hint}"
        )
    if n_classes != len(names):
        raise ModelBundleError(
            f"{checkpoint}: the checkpoint has {n_classes} classes but {len(names)} class names "
            f"were given ({', '.join(names)})"
        )
    hidden, in_dim = (int(d) for d in state["attention_net.0.weight"].shape)
    attention_dim = int(state[f"{_PREFIX}attention_a.0.weight"].shape[0])
    if (hidden, attention_dim) != CLAM_SIZES[size]:
        found = [s for s, dims in CLAM_SIZES.items() if dims == (hidden, attention_dim)]
        raise ModelBundleError(
            f"{checkpoint}: embedding/attention widths {hidden}/{attention_dim} are not CLAM "
            f"size {size!r} ({'/'.join(map(str, CLAM_SIZES[size]))})"
            + (f"; it is size {found[0]!r}" if found else "")
        )

    enc = ENCODERS.build(encoder, **dict(encoder_kwargs or {}))
    width = encoder_width(enc)
    if width != in_dim:
        raise ModelBundleError(
            f"{checkpoint}: the model takes {in_dim}-d features but encoder {encoder!r} gives "
            f"{width}-d; name the encoder it was trained on"
        )
    if encoder_weights is not None:
        ignored = load_encoder_weights(enc, encoder_weights)
        log.info("loaded %s into %s (%d unused tensors ignored)", encoder_weights, encoder, ignored)
        weights_note = f"encoder weights from {encoder_weights.name}"
    else:
        log.warning(
            "%s: no encoder weights given; the bundle's %s is randomly initialised",
            checkpoint,
            encoder,
        )
        weights_note = "encoder RANDOMLY initialised (no weights given): plumbing checks only"

    head_kwargs: dict[str, int | float | str | bool] = {
        "size": size,
        "dropout": dropout,
        "k_sample": k_sample,
        "subtyping": subtyping,
        "instance_loss": instance_loss,
    }
    head = HEADS.build(clam_type, in_dim=in_dim, n_classes=n_classes, **head_kwargs)
    try:
        head.load_state_dict(_map_onto_head(state, clam_type), strict=True)
    except RuntimeError as err:
        raise ModelBundleError(f"{checkpoint}: tensors do not fit {clam_type}: {err}") from err

    fields: dict[str, object] = {
        "encoder": encoder,
        "encoder_kwargs": dict(encoder_kwargs or {}),
        "feature_dim": in_dim,
        "head": clam_type,
        "head_kwargs": head_kwargs,
        "class_names": names,
        "input_mpp": input_mpp,
        "tile_px": tile_px,
        "weights_sha256": "0" * 64,
        "description": (
            f"CLAM {clam_type} ({size}) imported from {checkpoint.name} "
            f"(sha256 {file_sha256(checkpoint)}); {weights_note}"
        ),
    }
    return save_bundle(out, enc, head, fields)
