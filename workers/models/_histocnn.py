"""`histo_cnn`: a compact CNN meant to be trained here, self-supervised on a lab's own tiles
(`slidemill model pretrain`), where no pretrained pathology encoder can be downloaded.

Random ImageNet-style trunks pool away what tells tissue apart at a few µm/px (how crowded and how
large the nuclei are); a small net trained contrastively on the lab's tiles, with stain jitter as
the augmentation, learns exactly those differences and stays cheap enough to train on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from slidemill.workers.models._encoders import ENCODERS


class HistoCNN(nn.Module):
    """Four stages of two 3×3 conv-BN-ReLU (the first of each strided), global average pooling,
    then a fixed per-feature standardisation.

    The standardisation (buffers `feature_mean`, `feature_std`; identity until
    `set_standardisation`) is measured on the pretraining tiles and saved with the weights, so
    MIL heads see unit-scale features at training and at run time alike.

    forward: (B, 3, H, W) → (B, 4·width).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (width, 2 * width, 4 * width, 4 * width):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.feature_dim = c_in
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_mean: torch.Tensor
        self.feature_std: torch.Tensor
        self.register_buffer("feature_mean", torch.zeros(c_in))
        self.register_buffer("feature_std", torch.ones(c_in))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before standardisation (what pretraining optimises)."""
        return torch.as_tensor(self.net(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.trunk(x) - self.feature_mean) / self.feature_std

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the per-feature mean and spread (std floored, so a dead feature stays finite)."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-4))


@ENCODERS.register("histo_cnn")
def _histo_cnn(width: int = 32) -> nn.Module:
    return HistoCNN(width)
