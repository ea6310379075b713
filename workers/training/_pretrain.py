"""Self-supervised encoder pretraining on a lab's own tiles (SimCLR: Chen et al., 2020).

Two random views of each tile (crop, flip/rotation, stain jitter in optical density, occasional
grey, noise) are pulled together and pushed away from every other tile of the batch (NT-Xent
loss through a small projection head). Stain jitter is what matters for pathology: the encoder
cannot tell tiles apart by colour, so it learns structure (nuclear size and crowding, fibres,
glands), and scanner and stain differences between slides stop dominating the features.

Pure torch on in-memory uint8 tiles; `slidemill.pipeline.cohort` samples the tiles from slides.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional

from slidemill.schemas import Normalisation
from slidemill.workers.errors import TrainingError
from slidemill.workers.models import encoder_width
from slidemill.workers.training._loop import fixed_threads


@dataclass(frozen=True, slots=True)
class PretrainConfig:
    """Hyper-parameters of contrastive pretraining."""

    steps: int = 400
    """Optimiser steps (one batch each); 400 rather than 80 raised ABMIL's slide AUROC on the
    drawn benchmark (docs/learning-studies.md)."""
    batch_size: int = 128
    """Tiles per batch (2 views each: the loss contrasts 2·batch_size − 2 negatives)."""
    lr: float = 2e-3
    """Peak learning rate (one-cycle schedule)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    temperature: float = 0.2
    """NT-Xent temperature."""
    crop_fraction: float = 0.875
    """Side of the random crop, as a share of the tile side (keeps the physical scale)."""
    stain_jitter: float = 0.4
    """Optical density scaled by U(1 − s, 1 + s) per view ..."""
    hue_jitter: float = 0.2
    """... and by U(1 − h, 1 + h) per channel."""
    grey_probability: float = 0.2
    """Chance a view loses its colour altogether."""
    projection_dim: int = 64
    """Output of the projection head the loss sees (discarded after training)."""
    seed: int = 0
    """Seed of the projection head, batches and augmentations."""
    device: str | None = None
    """torch device; None = CUDA when available, else CPU."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise TrainingError(
                f"need steps >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}"
            )
        if not 0.25 <= self.crop_fraction <= 1.0:
            raise TrainingError(f"crop_fraction must lie in [0.25, 1], got {self.crop_fraction}")
        if not (self.lr > 0 and self.temperature > 0):
            raise TrainingError("lr and temperature must be positive")


@dataclass(frozen=True, slots=True)
class PretrainReport:
    """What a pretraining run did."""

    losses: tuple[float, ...]
    """NT-Xent loss of every step."""
    n_tiles: int
    """Tiles sampled from."""
    seconds: float
    """Wall time of the optimisation."""
    device: str
    """Where it ran."""


def augment(
    tiles: torch.Tensor,
    crop_px: int,
    config: PretrainConfig,
    norm: Normalisation,
    generator: torch.Generator,
) -> torch.Tensor:
    """One random view of each tile: (B, H, W, 3) uint8 → (B, 3, crop_px, crop_px) normalised."""
    b, h, w, _ = tiles.shape
    x = tiles.permute(0, 3, 1, 2).float().div_(255)
    top = torch.randint(0, h - crop_px + 1, (b,), generator=generator).tolist()
    left = torch.randint(0, w - crop_px + 1, (b,), generator=generator).tolist()
    turns = torch.randint(0, 4, (b,), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    views = []
    for i in range(b):
        v = x[i, :, top[i] : top[i] + crop_px, left[i] : left[i] + crop_px]
        v = v.flip(-1) if flips[i] else v
        views.append(torch.rot90(v, turns[i], (1, 2)))
    x = torch.stack(views).to(tiles.device)
    # stain jitter in optical density (Beer–Lambert): stronger/weaker staining, shifted hue
    od = -torch.log(x.clamp_min(1.0 / 255))
    s, hj = config.stain_jitter, config.hue_jitter
    od = od * torch.empty(b, 1, 1, 1).uniform_(1 - s, 1 + s, generator=generator).to(x.device)
    od = od * torch.empty(b, 3, 1, 1).uniform_(1 - hj, 1 + hj, generator=generator).to(x.device)
    x = torch.exp(-od)
    grey = (torch.rand(b, generator=generator) < config.grey_probability).to(x.device)
    x = torch.where(grey.view(b, 1, 1, 1), x.mean(1, keepdim=True).expand_as(x), x)
    x = x + 0.02 * torch.randn(x.shape, generator=generator).to(x.device)
    return normalise(x, norm)


def normalise(x: torch.Tensor, norm: Normalisation) -> torch.Tensor:
    """RGB in [0, 1], (B, 3, H, W) → the encoder's input, as `encode_tiles` feeds it."""
    mean = torch.tensor(norm.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B embeddings where rows i and i + B are two views of one tile."""
    n = z.shape[0] // 2
    z = functional.normalize(z, dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return functional.cross_entropy(sim, target)


def _trunk(encoder: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the loss trains: the encoder before any fixed standardisation it applies."""
    trunk = getattr(encoder, "trunk", None)
    return trunk if callable(trunk) else encoder


def pretrain_encoder(
    encoder: nn.Module,
    tiles: NDArray[np.uint8],
    config: PretrainConfig,
    norm: Normalisation | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> PretrainReport:
    """Train `encoder` in place on `tiles` (N, H, W, 3) uint8; `progress(step, loss)` per step.
    On CPU with a fixed thread count, so a seed gives the same weights on any machine.

    Afterwards, an encoder with `set_standardisation` gets the mean and spread of its features
    over (up to 4096 of) the tiles, so its outputs are unit-scale."""
    with fixed_threads():
        return _pretrain(encoder, tiles, config, norm, progress)


def _pretrain(
    encoder: nn.Module,
    tiles: NDArray[np.uint8],
    config: PretrainConfig,
    norm: Normalisation | None,
    progress: Callable[[int, float], None] | None,
) -> PretrainReport:
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise TrainingError(f"tiles must be (N, H, W, 3) uint8, got {tiles.shape} {tiles.dtype}")
    if len(tiles) < 2:
        raise TrainingError(f"need at least 2 tiles to contrast, got {len(tiles)}")
    norm = norm or Normalisation()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(config.seed)
    width = encoder_width(encoder)
    head = nn.Sequential(
        nn.Linear(width, 4 * config.projection_dim),
        nn.ReLU(inplace=True),
        nn.Linear(4 * config.projection_dim, config.projection_dim),
    )
    # channels_last: 1.5× faster convolutions on this project's 2-core CPU, tensor cores on GPU
    encoder.to(device).to(memory_format=torch.channels_last).train()
    head.to(device).train()
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=min(0.3, 10 / config.steps)
    )
    generator = torch.Generator().manual_seed(config.seed)
    pool = torch.from_numpy(np.ascontiguousarray(tiles))
    crop = max(16, math.floor(tiles.shape[1] * config.crop_fraction))
    batch = min(config.batch_size, len(tiles))
    trunk = _trunk(encoder)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(config.steps):
        idx = torch.randint(0, len(pool), (batch,), generator=generator)
        chosen = pool[idx].to(device)
        views = torch.cat([augment(chosen, crop, config, norm, generator) for _ in range(2)])
        views = views.contiguous(memory_format=torch.channels_last)
        loss = nt_xent(head(trunk(views)), config.temperature)
        if not torch.isfinite(loss):
            raise TrainingError(f"pretraining diverged at step {step} (loss {loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        if progress is not None:
            progress(step, losses[-1])
    seconds = time.perf_counter() - t0
    encoder.eval()
    standardise = getattr(encoder, "set_standardisation", None)
    if callable(standardise):
        sample = pool[torch.randperm(len(pool), generator=generator)[:4096]]
        with torch.inference_mode():
            feats = torch.cat(
                [
                    trunk(normalise(batch.to(device).permute(0, 3, 1, 2).float() / 255, norm))
                    for batch in sample.split(256)
                ]
            )
        standardise(feats.mean(0), feats.std(0))
    encoder.cpu().to(memory_format=torch.contiguous_format)
    return PretrainReport(tuple(losses), len(tiles), seconds, str(device))
