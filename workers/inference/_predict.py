"""Batched inference: tiles → features, features → slide and tile scores."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from slidemill.workers.models import LoadedModel, inference_settings

if TYPE_CHECKING:
    from slidemill.workers.models import MILOutput


def encode_tiles(
    model: LoadedModel, tiles: NDArray[np.uint8], batch_size: int
) -> NDArray[np.float32]:
    """Encode tiles (N, H, W, 3) uint8 RGB into features (N, feature_dim) float32."""
    norm = model.manifest.normalisation
    device = model.device
    cuda = device.type == "cuda"
    settings = inference_settings(device, bf16_supported=cuda and torch.cuda.is_bf16_supported())
    mean = torch.tensor(norm.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    out = np.empty((tiles.shape[0], model.manifest.feature_dim), dtype=np.float32)
    staging: torch.Tensor | None = None
    if settings.pin_memory and tiles.shape[0]:
        # one page-locked buffer per call: reusing it is safe because each batch's features
        # come back to the host (a sync) before the next batch is staged
        n = min(batch_size, tiles.shape[0])
        staging = torch.empty((n, *tiles.shape[1:]), dtype=torch.uint8).pin_memory()
    autocast = (
        torch.autocast(device.type, dtype=settings.autocast_dtype)
        if settings.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode():
        for start in range(0, tiles.shape[0], batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch_size]))
            if staging is not None:
                batch = staging[: batch.shape[0]].copy_(batch)
            x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
            features = _forward(model, x, mean, std, settings.channels_last, autocast)
            out[start : start + batch.shape[0]] = features.float().cpu().numpy()
    return out


def _forward(
    model: LoadedModel,
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    channels_last: bool,
    autocast: contextlib.AbstractContextManager[object],
) -> torch.Tensor:
    """The encoder on one batch of uint8 tiles (B, 3, H, W) on its device → (B, feature_dim)."""
    x = x.float().div_(255)
    x = x.sub_(mean).div_(std)  # in place: two fewer batch-sized tensors at the peak
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast:
        out: torch.Tensor = model.encoder(x)
    return out


def encode_tensor(model: LoadedModel, tiles: torch.Tensor, batch_size: int) -> NDArray[np.float32]:
    """Encode tiles already on the model's device (N, 3, H, W) uint8 RGB (decoded there, e.g.
    by nvJPEG) into features (N, feature_dim) float32 on the host; the same arithmetic as
    `encode_tiles`."""
    norm = model.manifest.normalisation
    device = model.device
    cuda = device.type == "cuda"
    settings = inference_settings(device, bf16_supported=cuda and torch.cuda.is_bf16_supported())
    mean = torch.tensor(norm.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    out = np.empty((tiles.shape[0], model.manifest.feature_dim), dtype=np.float32)
    autocast = (
        torch.autocast(device.type, dtype=settings.autocast_dtype)
        if settings.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode():
        for start in range(0, tiles.shape[0], batch_size):
            x = tiles[start : start + batch_size].to(device)
            features = _forward(model, x, mean, std, settings.channels_last, autocast)
            out[start : start + x.shape[0]] = features.float().cpu().numpy()
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
