"""int8 encoders on CPU workers: the encoder's linear layers quantised dynamically.

torch's eager dynamic quantisation (`torch.ao.quantization.quantize_dynamic`): each `nn.Linear`
keeps its weight in int8 and scales each batch's activations to int8 as they come, so a ViT's
matrix products (nearly all of its work) run in the CPU's int8 kernels (fbgemm / oneDNN, VNNI
where the CPU has it). torchao's `Int8DynamicActivationInt8WeightConfig`, the suggested successor,
was measured slower than float32 on these CPUs without torch.compile, and torch.ao's about twice
as fast (docs/benchmarks.md, "Encoder presets on CPU"), so torch.ao it is while torch ships it.

There is nothing to quantise this way on a GPU: torch's dynamic int8 `Linear` has CPU kernels
only, and a GPU worker already encodes in bfloat16/float16 autocast (`inference_settings`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

Quantize = Literal["none", "int8"]
"""The run's `--quantize`: the encoder's linear layers in int8 on CPU workers, or as they are."""


def quantizable_layers(encoder: nn.Module) -> int:
    """How many of the encoder's modules dynamic quantisation replaces: plain `nn.Linear`
    layers (its mapping matches the class exactly, so a subclass such as `MultiheadAttention`'s
    output projection stays float)."""
    return sum(type(m) is nn.Linear for m in encoder.modules())


def quantized_layers(encoder: nn.Module) -> int:
    """How many of the encoder's modules are dynamically quantised int8 linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in encoder.modules())


def quantize_encoder(encoder: nn.Module) -> int:
    """Replace the encoder's `nn.Linear` layers, in place, by int8 dynamically quantised ones
    (CPU only; the encoder must be on the CPU and in eval mode). Returns how many were replaced:
    0 for an encoder without any (a CNN), which then stays float32, with a warning saying so.

    In place, never a copy: `quantize_dynamic` copies with `copy.deepcopy`, which some encoders
    refuse (a preset holds its card's read-only mappings), and a copy would hold a 1.1 B-parameter
    encoder's float32 weights twice while it is made.
    """
    if quantizable_layers(encoder) == 0:
        log.warning(
            "--quantize int8: %s has no linear layers to quantise; it encodes in float32",
            type(encoder).__name__,
        )
        return 0
    with warnings.catch_warnings():
        # torch.ao.quantization warns on every call that it is deprecated in favour of torchao,
        # and that quantized tensors (its int8 weights) are: torchao's int8 is the slower one
        # here without torch.compile (see the module's docstring), and the torch range in
        # pyproject.toml is one that still ships torch.ao. Only these two messages are silenced.
        warnings.filterwarnings(
            "ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel"
        )
        torch.ao.quantization.quantize_dynamic(
            encoder, {nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return quantized_layers(encoder)
