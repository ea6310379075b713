"""Named tensors from local files: state dicts saved by torch or safetensors, never pickled code;
and how a file's tensors fit an encoder (what is missing, unexpected, of the wrong shape)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import load_file
from torch import nn

from slidemill.workers.errors import ModelBundleError

WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "trunk.")
"""Prefixes a training framework puts before every key (DataParallel's `module.`, a Lightning
module's `model.`, a wrapper's `backbone.`/`trunk.`): dropped when every key of a file has one."""

_CHECKPOINT_KEYS = ("state_dict", "model")
"""Where training checkpoints keep the state dict (PyTorch Lightning, DINO/iBOT `model`)."""


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A file's named tensors (torch.save'd, tensors only, never pickled code; or safetensors).

    A training checkpoint that wraps the state dict under "state_dict" or "model" is unwrapped.
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
    if isinstance(raw, Mapping):
        wrapped = [k for k in _CHECKPOINT_KEYS if isinstance(raw.get(k), Mapping)]
        if wrapped:
            raw = raw[wrapped[0]]
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise ModelBundleError(f"{path}: expected a state dict of named tensors")
    return dict(raw)


def strip_wrappers(
    state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...] = WRAPPER_PREFIXES
) -> dict[str, torch.Tensor]:
    """`state` without the wrapper prefixes that every one of its keys carries, outermost first
    (`module.model.blocks.0…` → `blocks.0…`)."""
    out = dict(state)
    while out:
        common = [p for p in prefixes if all(k.startswith(p) for k in out)]
        if not common:
            break
        out = {k.removeprefix(common[0]): v for k, v in out.items()}
    return out


@dataclass(frozen=True, slots=True)
class WeightsFit:
    """How a file's tensors fit a module's: the keys that keep them from loading strictly."""

    missing: tuple[str, ...]
    """Module keys the file does not have."""
    unexpected: tuple[str, ...]
    """File keys the module does not have (ignored where extras are allowed)."""
    wrong_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    """(key, shape in the file, shape in the module) for keys both have."""

    @property
    def exact(self) -> bool:
        """Every module tensor supplied with its shape, and nothing else."""
        return not (self.missing or self.unexpected or self.wrong_shape)

    def describe(self, *, with_unexpected: bool = True) -> str:
        """One line: the counts and the first few keys of each kind."""
        shapes = [f"{k} {_dims(got)} vs {_dims(want)}" for k, got, want in self.wrong_shape]
        parts = [f"{len(self.missing)} tensors missing ({few(list(self.missing))})"]
        if with_unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({few(list(self.unexpected))})")
        parts.append(f"{len(self.wrong_shape)} of the wrong shape ({few(shapes, 3)})")
        return ", ".join(parts)


def fit_weights(
    wanted: Mapping[str, torch.Size | tuple[int, ...]],
    given: Mapping[str, torch.Tensor],
    optional: tuple[str, ...] = (),
) -> WeightsFit:
    """Compare a module's tensor shapes (`wanted`) with a file's tensors (`given`); keys starting
    with an `optional` prefix are neither missing nor unexpected when absent or extra."""

    def counts(key: str) -> bool:
        return not key.startswith(optional) if optional else True

    missing = tuple(sorted(k for k in wanted if k not in given and counts(k)))
    unexpected = tuple(sorted(k for k in given if k not in wanted and counts(k)))
    wrong = tuple(
        (k, tuple(given[k].shape), tuple(wanted[k]))
        for k in sorted(wanted)
        if k in given and tuple(given[k].shape) != tuple(wanted[k])
    )
    return WeightsFit(missing, unexpected, wrong)


@runtime_checkable
class TakesPublishedWeights(Protocol):
    """An encoder that reads its publisher's files itself (an encoder preset), in the key layout
    and format they ship in, and fails in one line when a file is not its weights."""

    def load_published_state(self, state: dict[str, torch.Tensor], source: str) -> int:
        """Fill from `state` read from `source` (for messages); returns keys left unused."""
        ...


def load_encoder_weights(encoder: nn.Module, path: Path) -> int:
    """Fill `encoder` from a local state dict file (torch or safetensors); returns keys ignored.

    Keys may carry DataParallel's `module.` and may lack the encoder's wrapper prefix (a plain
    torchvision ResNet-50 file fits `resnet50_trunc`); every encoder tensor must be supplied with
    its shape, and extra tensors (such a file's layer4 and fc) are ignored.

    An encoder preset (or an "A+B" encoder whose only weights are a preset's) reads the file
    itself, in its publisher's layout, and refuses tensors it does not know.
    """
    raw = read_state_dict(path, "encoder weights")
    publisher = _published_weights_holder(encoder)
    if publisher is not None:
        return publisher.load_published_state(raw, str(path))
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
    fit = fit_weights({k: v.shape for k, v in wanted.items()}, best)
    if fit.missing or fit.wrong_shape:
        raise ModelBundleError(
            f"{path}: does not fit encoder {type(encoder).__name__}: "
            f"{len(fit.missing)} tensors missing ({few(list(fit.missing))}), "
            f"{len(fit.wrong_shape)} of the wrong shape ({few([k for k, _, _ in fit.wrong_shape])})"
        )
    encoder.load_state_dict(best, strict=True)
    return len(given) - len(best)


def _published_weights_holder(encoder: nn.Module) -> TakesPublishedWeights | None:
    """The encoder itself when it reads its publisher's files, or its one part that does when
    that part holds all of its weights (a preset joined with weightless features)."""
    if isinstance(encoder, TakesPublishedWeights):
        return encoder
    parts = [m for m in encoder.modules() if isinstance(m, TakesPublishedWeights)]
    if len(parts) != 1 or not isinstance(parts[0], nn.Module):
        return None
    total = sum(t.numel() for t in encoder.state_dict().values())
    owned = sum(t.numel() for t in parts[0].state_dict().values())
    return parts[0] if owned == total else None


def _dims(shape: tuple[int, ...]) -> str:
    """A shape as 1024x3x16x16 (brackets would read as rich markup)."""
    return "x".join(map(str, shape)) or "scalar"


def few(keys: list[str], n: int = 6) -> str:
    """Up to n names for a one-line message; no brackets, which rich would take for markup."""
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
