"""Import of CLAM checkpoints (mahmoodlab/CLAM) as slidemill bundles.

`import_clam_checkpoint` turns a state dict saved by CLAM (`torch.save(model.state_dict())`) into
a slidemill bundle whose head is `clam_sb` or `clam_mb` (see `_clam` for CLAM's parameter names).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from slidemill.schemas import ModelManifest
from slidemill.schemas.errors import InvalidInputError
from slidemill.workers.errors import ModelBundleError
from slidemill.workers.models._bundle import encoder_width, file_sha256, save_bundle
from slidemill.workers.models._clam import CLAM_SIZES, ClamSize, ClamType
from slidemill.workers.models._encoders import ENCODERS
from slidemill.workers.models._heads import HEADS
from slidemill.workers.models._weights import few, load_encoder_weights, read_state_dict

log = logging.getLogger(__name__)


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


def read_clam_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Load a CLAM state dict with its keys cleaned (DataParallel's `module.`, loss buffers)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in read_state_dict(checkpoint, "CLAM checkpoint").items():
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


def _check_arguments(
    clam_type: str, size: str, names: tuple[str, ...], input_mpp: float, tile_px: int
) -> None:
    """Usage errors, before the checkpoint is read (ValueError: the caller's mistake)."""
    if clam_type not in ("clam_sb", "clam_mb"):
        raise InvalidInputError(f"CLAM type must be 'clam_sb' or 'clam_mb', got {clam_type!r}")
    if size not in CLAM_SIZES:
        raise InvalidInputError(f"CLAM size must be 'small' or 'big', got {size!r}")
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise InvalidInputError(
            f"need two or more distinct, non-empty class names, got {list(names)}"
        )
    if input_mpp <= 0 or tile_px < 16:
        raise InvalidInputError(f"need mpp > 0 and tile px >= 16, got {input_mpp} and {tile_px}")


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
            f"{checkpoint}: not a gated {clam_type} checkpoint: missing keys: {few(missing)}; "
            f"unexpected keys: {few(unexpected)}{hint}"
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
