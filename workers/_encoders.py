"""Tile encoders: the `Encoder` protocol, and the registered implementations.

Weights never download: torchvision models are built with `weights=None` and filled from the
model bundle.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from workers._registry import Registry


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
        import torchvision  # here, not at import: it costs ~1.3 s and only ResNets need it

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
