"""`PresetEncoder`: an `EncoderPreset` built with timm or transformers, never fetching anything,
and filled from its publisher's weight file in the publisher's key layout; every preset is
registered in `ENCODERS` under its name."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slidemill.cluster import require_extra
from slidemill.workers.errors import PresetWeightsError, UnknownComponentError
from slidemill.workers.models._encoders import ENCODERS
from slidemill.workers.models._presets import PRESETS, Argument, EncoderPreset, LayerRef
from slidemill.workers.models._weights import WeightsFit, fit_weights, strip_wrappers


def _arguments(values: dict[str, Argument] | Any) -> dict[str, Any]:
    """Card arguments with their layer classes imported."""
    return {k: v.resolve() if isinstance(v, LayerRef) else v for k, v in dict(values).items()}


def build_net(preset: EncoderPreset, depth: int | None = None) -> nn.Module:
    """The preset's model with fresh (random) weights; `depth` builds fewer blocks at full width
    (for tests). Built under `torch.device("meta")`, it allocates nothing."""
    arguments = _arguments(preset.arguments)
    if depth is not None:
        arguments[preset.depth_argument] = depth
    if preset.library == "timm":
        # here, not at import: slow to import, and only timm presets need it
        timm = require_extra("timm", "encoders", f"the {preset.name} encoder")
        return timm.create_model(preset.architecture, pretrained=False, **arguments)
    # here, not at import: slower still
    transformers = require_extra("transformers", "encoders", f"the {preset.name} encoder")

    model_class = getattr(transformers, preset.architecture)
    config = model_class.config_class(**arguments)
    return model_class(config, **_arguments(preset.model_arguments))


class PresetEncoder(nn.Module):
    """A named pathology foundation model (see `EncoderPreset`), its embedding as its card
    computes it: the class token, or the class token beside the mean of the patch tokens.

    forward: (B, 3, tile_px, tile_px) float32, normalised with the preset's mean and std →
    (B, width) float32 (other tile sizes where `preset.any_tile_size`).
    """

    def __init__(self, preset: EncoderPreset, depth: int | None = None) -> None:
        super().__init__()
        self.preset = preset
        self.depth = depth
        self.feature_dim = preset.width
        self.net: nn.Module = build_net(preset, depth)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, prefix + patches, D): the last block's tokens after the final
        norm, class token first, then any register tokens."""
        if self.preset.library == "timm":
            return torch.as_tensor(self.net.forward_features(x))  # type: ignore[operator]
        return torch.as_tensor(self.net(pixel_values=x).last_hidden_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        cls = tokens[:, 0]
        if self.preset.pooling == "cls":
            return cls
        prefix = int(getattr(self.net, "num_prefix_tokens", 1))  # class + register tokens
        return torch.cat([cls, tokens[:, prefix:].mean(1)], dim=-1)

    def load_published_state(self, state: dict[str, torch.Tensor], source: str) -> int:
        """Fill from the publisher's tensors (timm keys for timm presets; the transformers
        model's keys as the publisher saved them, which transformers renames itself), with
        any wrapper prefix (`module.`, `model.`). Raises `PresetWeightsError` in one line
        naming `source` when the tensors are not this preset's. Returns tensors left unused."""
        given = {
            k: v.float() if v.is_floating_point() else v for k, v in strip_wrappers(state).items()
        }
        if self.preset.library == "timm":
            return self._load_timm(given, source)
        return self._load_transformers(given, source)

    def _load_timm(self, given: dict[str, torch.Tensor], source: str) -> int:
        wanted = {k: v.shape for k, v in self.net.state_dict().items()}
        extras_allowed = fit_weights(wanted, given, self.preset.optional_keys)
        missing = tuple(sorted(k for k in wanted if k not in given))  # timm initialises none
        fit = WeightsFit(missing, extras_allowed.unexpected, extras_allowed.wrong_shape)
        if not fit.exact:
            raise self._mismatch(source, fit, _timm_presets_fitting(given))
        meta = any(p.is_meta for p in self.net.parameters())
        self.net.load_state_dict({k: given[k] for k in wanted}, strict=True, assign=meta)
        return len(given) - len(wanted)

    def _load_transformers(self, given: dict[str, torch.Tensor], source: str) -> int:
        net: Any = self.net
        with _quiet_transformers():
            loaded, info = type(net).from_pretrained(
                None,  # no folder, no hub: the config is ours, the tensors are the file's
                config=net.config,
                state_dict=given,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, in one line
                **_arguments(self.preset.model_arguments),
            )
        optional = self.preset.optional_keys

        def counts(key: str) -> bool:
            return not any(part.startswith(optional) for part in _suffixes(key))

        fit = WeightsFit(
            missing=tuple(sorted(k for k in info["missing_keys"] if counts(k))),
            unexpected=tuple(sorted(k for k in info["unexpected_keys"] if counts(k))),
            wrong_shape=tuple(
                sorted((key, tuple(got), tuple(want)) for key, got, want in info["mismatched_keys"])
            ),
        )
        if not fit.exact:
            raise self._mismatch(source, fit, ())
        loaded.train(self.training)
        self.net = loaded
        return len(info["unexpected_keys"])

    def _mismatch(
        self, source: str, fit: WeightsFit, fitting: tuple[str, ...]
    ) -> PresetWeightsError:
        p = self.preset
        blocks = f", {self.depth} blocks" if self.depth is not None else ""
        hint = f"; they fit preset {', '.join(fitting)}" if fitting else ""
        return PresetWeightsError(
            f"{source}: not the weights of encoder preset {p.name!r} ({p.hub_id}, "
            f"{p.library} {p.architecture}{blocks}): {fit.describe()}{hint}"
        )


def _suffixes(key: str) -> Iterator[str]:
    """`key` and the key without each leading component (a file's `vit.`-style prefix)."""
    parts = key.split(".")
    for i in range(len(parts)):
        yield ".".join(parts[i:])


def _timm_presets_fitting(given: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The timm presets these tensors fit exactly."""
    return tuple(
        p.name
        for p in PRESETS.values()
        if p.library == "timm" and fit_weights(_shapes(p.name), given, p.optional_keys).exact
    )


@functools.cache
def _shapes(name: str) -> dict[str, torch.Size]:
    """A preset's tensor shapes at full size (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = build_net(PRESETS[name])
    return {k: v.shape for k, v in net.state_dict().items()}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading bars and load report, off for one call (its findings are ours to
    report, in one line)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _factory(name: str, depth: int | None = None) -> nn.Module:
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise UnknownComponentError(f"encoder {name!r}: depth is a number of blocks, 1 or more")
    return PresetEncoder(PRESETS[name], depth)


for _name in PRESETS:
    ENCODERS.register(_name)(functools.partial(_factory, _name))
