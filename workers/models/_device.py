"""Which device a model runs on, and how tiles go through its encoder there."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def default_device() -> torch.device:
    """CUDA when this process sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """How tiles go through the encoder on one kind of device."""

    pin_memory: bool
    """Stage each uint8 batch in page-locked host memory, so the copy to the device is async."""
    channels_last: bool
    """Feed (and keep the encoder in) NHWC memory format, which tensor cores prefer."""
    autocast_dtype: torch.dtype | None
    """Mixed precision for the encoder's forward; None = plain float32."""


def inference_settings(device: torch.device, *, bf16_supported: bool = False) -> InferenceSettings:
    """The encoder settings for `device`: on CUDA pinned memory, channels_last and autocast
    (bf16 where the GPU has it, which cannot overflow; else fp16); elsewhere float32 as is, so
    CPU features stay bit-for-bit what they were."""
    if device.type != "cuda":
        return InferenceSettings(pin_memory=False, channels_last=False, autocast_dtype=None)
    dtype = torch.bfloat16 if bf16_supported else torch.float16
    return InferenceSettings(pin_memory=True, channels_last=True, autocast_dtype=dtype)
