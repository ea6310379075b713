"""How many tiles go through the encoder at once when the run leaves `--batch-size` unset: the
largest batch whose activations fit the worker's memory.

`fit_batch` is the arithmetic (pure); `activation_bytes` measures an encoder's activations per
tile once, with one tile through it; `auto_batch_size` asks the worker what memory it has.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import psutil
import torch
from torch import nn

from slidemill.workers.models import LoadedModel

log = logging.getLogger(__name__)

AUTO_BATCH_CAP = {"cpu": 64, "cuda": 256}
"""The most tiles an automatic batch takes on each kind of device: on a CPU throughput stops
growing long before (and 64 was the fixed batch before it was chosen by memory); a GPU keeps
its tensor cores busy with a few hundred."""
HOST_TARGET = 0.6
"""Fraction of a CPU worker's memory limit the worker may fill, encoder batches included: Dask's
default spill target, so a batch's activations do not push the worker into spilling."""
DEVICE_TARGET = 0.8
"""Fraction of a GPU's free memory a batch may take (the allocator fragments)."""
LIVE_OUTPUTS = 4
"""Tensors alive at a layer's peak, in units of its largest output: the layer's input, its
output and one temporary (a ViT's MLP: its hidden activations before and after GELU beside the
residual stream)."""
UNHOOKED_INPUTS = 16
"""Activations per tile, in units of the tile's float32 input, assumed for an encoder whose
layers cannot be watched (a TorchScript module): a ResNet's first stage is about that size."""

_PER_TILE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, str], int]] = (
    weakref.WeakKeyDictionary()
)
"""Measured activation bytes per tile, by encoder (forgotten with it), tile edge and device."""
_PROBING = threading.Lock()
"""One measurement at a time: a worker's threads start their first encode tasks together."""


def fit_batch(free_bytes: int, per_tile_bytes: int, cap: int, tasks: int = 1) -> int:
    """The largest batch, from 1 to `cap`, whose activations (`per_tile_bytes` a tile) fit
    `free_bytes` shared by `tasks` encode tasks running at once. At least 1 however little
    is free: a task must encode something (the worker's own memory limits then decide)."""
    if cap < 1 or tasks < 1:
        raise ValueError(f"cap ({cap}) and tasks ({tasks}) must be at least 1")
    if per_tile_bytes <= 0:
        return cap
    return max(1, min(cap, max(free_bytes, 0) // (tasks * per_tile_bytes)))


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in a module's output (a tensor, a tuple, a transformers output)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


def activation_bytes(encoder: nn.Module, tile_px: int, device: torch.device) -> int:
    """An estimate of the memory one tile's forward needs beyond the encoder's weights, from
    one `tile_px` tile through it (measured once per encoder, tile size and device): the
    largest output of any of its layers times `LIVE_OUTPUTS`, plus the float32 input."""
    key = (tile_px, str(device))
    with _PROBING:
        known = _PER_TILE.setdefault(encoder, {})
        if key not in known:
            known[key] = _probe(encoder, tile_px, device)
        return known[key]


def _probe(encoder: nn.Module, tile_px: int, device: torch.device) -> int:
    largest = 0
    me = threading.get_ident()

    def watch(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal largest
        if threading.get_ident() == me:  # not another thread's batch through the same encoder
            largest = max(largest, _nbytes(output))

    handles = []
    for module in encoder.modules():
        if isinstance(module, torch.jit.ScriptModule):
            continue  # no hooks on TorchScript
        handles.append(module.register_forward_hook(watch))
    input_bytes = 3 * tile_px * tile_px * 4
    try:
        with torch.inference_mode():
            encoder(torch.zeros(1, 3, tile_px, tile_px, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if largest == 0:
        largest = UNHOOKED_INPUTS * input_bytes // LIVE_OUTPUTS
    return LIVE_OUTPUTS * max(largest, input_bytes) + input_bytes


def free_memory(device: torch.device) -> tuple[int, int]:
    """Bytes a batch may use on `device` now, and how many encode tasks share them: on a GPU
    `DEVICE_TARGET` of its free memory (with what PyTorch holds cached), one task (a GPU worker
    runs one inference task at a time, its GPU resource); on the host `HOST_TARGET` of the Dask
    worker's memory limit less what the process holds, shared by the worker's threads (outside
    a worker, or without a limit, of the memory available)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(DEVICE_TARGET * (free + cached)), 1
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not in a Dask worker
        return int(HOST_TARGET * psutil.virtual_memory().available), 1
    threads = max(1, int(worker.state.nthreads))
    limit = worker.memory_manager.memory_limit
    if not limit:
        return int(HOST_TARGET * psutil.virtual_memory().available), threads
    held = psutil.Process().memory_info().rss
    return int(HOST_TARGET * limit) - held, threads


def auto_batch_size(model: LoadedModel, tile_px: int) -> int:
    """The batch for `model`'s encoder on this worker when the run leaves `--batch-size` unset:
    `fit_batch` of the worker's free memory and the encoder's measured activations per tile,
    at most `AUTO_BATCH_CAP` of its device."""
    device = model.device
    per_tile = activation_bytes(model.encoder, tile_px, device)
    free, tasks = free_memory(device)
    batch = fit_batch(free, per_tile, AUTO_BATCH_CAP.get(device.type, AUTO_BATCH_CAP["cpu"]), tasks)
    log.debug(
        "batch %d: %.1f MiB per tile, %.0f MiB free for %d task(s)",
        batch,
        per_tile / 2**20,
        free / 2**20,
        tasks,
    )
    return batch
