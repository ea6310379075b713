"""Batched inference: tiles → features, features → slide and tile scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from workers._bundle import LoadedModel
from workers._heads import MILOutput


def encode_tiles(
    model: LoadedModel, tiles: NDArray[np.uint8], batch_size: int
) -> NDArray[np.float32]:
    """Encode tiles (N, H, W, 3) uint8 RGB into features (N, feature_dim) float32."""
    norm = model.manifest.normalisation
    device = model.device
    mean = torch.tensor(norm.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    out = np.empty((tiles.shape[0], model.manifest.feature_dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, tiles.shape[0], batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch_size]))
            x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            x = (x - mean) / std
            out[start : start + batch.shape[0]] = model.encoder(x).float().cpu().numpy()
    return out


@dataclass(frozen=True, slots=True)
class SlidePrediction:
    """MIL outputs for one slide as numpy arrays."""

    probabilities: NDArray[np.float32]
    """Slide class probabilities, shape (C,)."""
    attention: NDArray[np.float32]
    """Attention over tiles, shape (N,), sums to 1."""
    tile_scores: NDArray[np.float32]
    """Per-tile class probabilities, shape (N, C)."""


def predict_slide(model: LoadedModel, features: NDArray[np.float32]) -> SlidePrediction:
    """Run the MIL head on one slide's features (N, feature_dim)."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(model.device)
        out: MILOutput = model.head(x)
        return SlidePrediction(
            probabilities=torch.softmax(out.logits.float(), dim=-1).cpu().numpy(),
            attention=out.attention.float().cpu().numpy(),
            tile_scores=torch.softmax(out.tile_logits.float(), dim=-1).cpu().numpy(),
        )
