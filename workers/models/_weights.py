"""Named tensors from local files: state dicts saved by torch or safetensors, never pickled code."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from slidemill.workers.errors import ModelBundleError


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
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


def load_encoder_weights(encoder: nn.Module, path: Path) -> int:
    """Fill `encoder` from a local state dict file (torch or safetensors); returns keys ignored.

    Keys may carry DataParallel's `module.` and may lack the encoder's wrapper prefix (a plain
    torchvision ResNet-50 file fits `resnet50_trunc`); every encoder tensor must be supplied with
    its shape, and extra tensors (such a file's layer4 and fc) are ignored.
    """
    raw = read_state_dict(path, "encoder weights")
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
            f"{len(missing)} tensors missing ({few(missing)}), "
            f"{len(wrong)} of the wrong shape ({few(wrong)})"
        )
    encoder.load_state_dict(best, strict=True)
    return len(given) - len(best)


def few(keys: list[str], n: int = 6) -> str:
    """Up to n names for a one-line message; no brackets, which rich would take for markup."""
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
