"""Tile encoders: the `Encoder` protocol, and the registered implementations.

Names: the torchvision ResNets, `resnet50_trunc`, `tiny_cnn`, any timm model as
`timm:<model_name>`, and `torchscript` (a user's TorchScript file); `histo_cnn` and
`handcrafted` register from their own files. "A+B" names the concatenation of encoders A and B
(`ConcatEncoder`), e.g. `histo_cnn+handcrafted`. Weights never download:
torchvision models are built with `weights=None` and timm models with `pretrained=False`, and
both are filled from the model bundle (or a local weights file when a bundle is made).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from slidemill.cluster import require_extra
from slidemill.workers.errors import ModelBundleError, UnknownComponentError
from slidemill.workers.models._registry import Registry


@runtime_checkable
class Encoder(Protocol):
    """Maps a batch of normalised tiles to feature vectors.

    forward: (B, 3, H, W) float32 → (B, feature_dim) float32.
    """

    feature_dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


ENCODERS: Registry[nn.Module] = Registry("encoder")


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier: global-average-pooled last-stage features.

    forward: (B, 3, H, W) → (B, 512) for resnet18/34, (B, 2048) for resnet50.
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        # here, not at import: it is slow to import and only ResNets need it
        torchvision = require_extra("torchvision", "encoders", f"the {arch} encoder")

        net = getattr(torchvision.models, arch)(weights=None)
        self.feature_dim = int(net.fc.in_features)
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.net(x))


@ENCODERS.register("resnet18")
def _resnet18() -> nn.Module:
    return ResNetTrunk("resnet18")


@ENCODERS.register("resnet34")
def _resnet34() -> nn.Module:
    return ResNetTrunk("resnet34")


@ENCODERS.register("resnet50")
def _resnet50() -> nn.Module:
    return ResNetTrunk("resnet50")


class TinyCNN(nn.Module):
    """Two conv blocks and global pooling: for tests and plumbing checks on CPU.

    forward: (B, 3, H, W) → (B, width).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.feature_dim = width
        self.net = nn.Sequential(
            nn.Conv2d(3, width // 2, 5, stride=2, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.net(x))


@ENCODERS.register("tiny_cnn")
def _tiny_cnn(width: int = 32) -> nn.Module:
    return TinyCNN(width)


class ResNet50Trunc(nn.Module):
    """torchvision ResNet-50 cut after layer3 and global-average-pooled: CLAM's `resnet50_trunc`.

    The parameters keep torchvision's names under `net.` (layer4 and fc are gone), so ImageNet
    weights saved by torchvision load after dropping their `layer4.*` and `fc.*` keys.

    forward: (B, 3, H, W) → (B, 1024).
    """

    feature_dim = 1024

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        net.layer4 = nn.Identity()  # torchvision's forward then pools layer3's 1024 channels
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.net(x))


@ENCODERS.register("resnet50_trunc")
def _resnet50_trunc() -> nn.Module:
    return ResNet50Trunc()


# create_model arguments that would fetch or read weights outside the bundle.
_TIMM_WEIGHT_ARGS = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}
)


class TimmEncoder(nn.Module):
    """Any timm model, built with `num_classes=0`: timm's pooled (pre-logits) features.

    `kwargs` go to `timm.create_model` (e.g. `img_size`, `dynamic_img_size`, `global_pool`).
    forward: (B, 3, H, W) → (B, feature_dim); ViTs take their `img_size` unless built with
    `dynamic_img_size=True`.
    """

    def __init__(self, model_name: str, **kwargs: int | float | str | bool) -> None:
        super().__init__()
        # here, not at import: it is slow to import and only timm encoders need it
        timm = require_extra("timm", "encoders", f"the encoder 'timm:{model_name}'")

        if ":" in model_name:  # "hf-hub:…", "local-dir:…": timm would fetch weights
            raise UnknownComponentError(
                f"encoder 'timm:{model_name}': name a model of timm's own registry "
                "(timm.list_models()); weights come from a local file, never a hub"
            )
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
            raise UnknownComponentError(f"unknown timm model {model_name!r}{hint}")
        refused = sorted(_TIMM_WEIGHT_ARGS & set(kwargs))
        if refused:
            raise UnknownComponentError(
                f"encoder 'timm:{model_name}': {', '.join(refused)} not allowed; weights come "
                "from the bundle or a local --encoder-weights file"
            )
        model_kwargs: dict[str, Any] = dict(kwargs)  # timm checks them, per architecture
        net: Any = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        # head_hidden_size, where timm has it, is what num_classes=0 returns: MobileNetV3's
        # conv head makes it 1024 against num_features 576
        self.feature_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        self.net: nn.Module = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.net(x))


@ENCODERS.register_family("timm")
def _timm(model_name: str, **kwargs: int | float | str | bool) -> nn.Module:
    return TimmEncoder(model_name, **kwargs)


class TorchScriptEncoder(nn.Module):
    """A user's encoder saved with `torch.jit.save` (scripted or traced): the file gives the
    architecture; its parameters sit under `net.` like any encoder's, so a bundle's
    weights.safetensors fills them.

    `feature_dim` is measured by running one zero tile of `probe_px`² unless given (a bundle
    records it). `source` is the file, which `save_bundle` copies into each bundle made from
    this encoder.

    forward: (B, 3, H, W) → (B, feature_dim), whatever the scripted module computes.
    """

    def __init__(self, file: str | Path, feature_dim: int | None = None, probe_px: int = 224):
        super().__init__()
        self.source = Path(file)
        try:
            with warnings.catch_warnings():
                # recent torch flags torch.jit as deprecated on every load: nothing a user
                # with a TorchScript encoder can act on, once per worker
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
                net = torch.jit.load(str(self.source), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as err:
            raise ModelBundleError(
                f"{self.source}: not a TorchScript file (save one with torch.jit.save): "
                f"{_last_line(err)}"
            ) from err
        self.net = net
        self.feature_dim = feature_dim if feature_dim is not None else self._probe(probe_px)

    def _probe(self, px: int) -> int:
        shape = (1, 3, px, px)
        try:
            with torch.inference_mode():
                y = self.net.eval()(torch.zeros(shape))
        except RuntimeError as err:
            raise ModelBundleError(
                f"{self.source}: fails on a {shape} tile: {_last_line(err)}"
            ) from err
        if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != 1:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ModelBundleError(
                f"{self.source}: gives {got} for a {shape} tile; an encoder returns "
                "(B, feature_dim)"
            )
        return int(y.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.net(x))


def _last_line(err: BaseException) -> str:
    """TorchScript errors put the reason last, after a traceback of the scripted code."""
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


@ENCODERS.register("torchscript")
def _torchscript(
    file: str | None = None, feature_dim: int | None = None, probe_px: int = 224
) -> nn.Module:
    if file is None:
        raise UnknownComponentError(
            "encoder 'torchscript' needs its TorchScript file (encoder_file, --encoder-file)"
        )
    return TorchScriptEncoder(file, feature_dim, probe_px)


class ConcatEncoder(nn.Module):
    """Encoders side by side on the same tiles (name "A+B"): their features concatenated in the
    order named, e.g. a learned encoder with the `handcrafted` features.

    The state dict holds `parts.<i>.*`, except when exactly one part has weights (a learned
    encoder joined with weightless ones): then its keys are that part's own, so the learned
    encoder's weights file (`model pretrain`'s, a timm state dict) fits the concatenation
    unchanged, through `--encoder-weights` as for the encoder alone.

    forward: (B, 3, H, W) → (B, Σ feature_dim of the parts) float32.
    """

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(parts) < 2:
            raise UnknownComponentError("a concatenation of encoders needs two or more parts")
        if any(isinstance(p, TorchScriptEncoder) for p in parts):
            raise UnknownComponentError(
                "encoder 'torchscript' cannot be part of an 'A+B' encoder: its file travels "
                "alone in a bundle; script the concatenation instead"
            )
        dims = [getattr(p, "feature_dim", None) for p in parts]
        if not all(isinstance(d, int) for d in dims):
            raise UnknownComponentError("every part of an 'A+B' encoder declares feature_dim")
        self.parts = nn.ModuleList(parts)
        self.feature_dims: tuple[int, ...] = tuple(int(d) for d in dims if isinstance(d, int))
        self.feature_dim = sum(self.feature_dims)
        holders = [i for i, p in enumerate(parts) if p.state_dict()]
        self._owner = f"parts.{holders[0]}." if len(holders) == 1 else None
        if self._owner is not None:
            self.register_state_dict_post_hook(_unprefix_state)
            self.register_load_state_dict_pre_hook(_prefix_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32: under autocast a learned part answers in bf16, the others in float32
        return torch.cat([torch.as_tensor(p(x)).float() for p in self.parts], 1)


def _unprefix_state(
    module: nn.Module, state: dict[str, torch.Tensor], prefix: str, _meta: object
) -> None:
    """Post state-dict hook: the one weighted part's keys without its `parts.<i>.`."""
    owner = prefix + str(getattr(module, "_owner", ""))
    for key in [k for k in state if k.startswith(owner)]:
        state[prefix + key[len(owner) :]] = state.pop(key)


def _prefix_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    prefix: str,
    _meta: object,
    _strict: bool,
    _missing: list[str],
    _unexpected: list[str],
    _errors: list[str],
) -> None:
    """Load pre-hook: the keys `_unprefix_state` wrote back under their part."""
    owner = prefix + str(getattr(module, "_owner", ""))
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(prefix + "parts.")]:
        state[owner + key[len(prefix) :]] = state.pop(key)


@ENCODERS.register_join
def _concat(parts: list[nn.Module]) -> nn.Module:
    return ConcatEncoder(parts)
