"""JPEG decoded where the encoder runs: batches of stored JPEG tiles through torchvision's
`decode_jpeg`, which on a CUDA device is nvJPEG and on the CPU libjpeg-turbo.

A slide's stored tiles are often abbreviated JPEG streams (the Huffman and quantisation tables
live once in the TIFF's JPEGTables) and, on Aperio slides, RGB without a marker saying so.
`full_stream` makes each one a standalone JPEG that any decoder reads the same way: the tables
spliced in, and for RGB an Adobe APP14 marker with transform 0 ("no colour transform").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray

JpegDecode = Literal["cpu", "nvjpeg"]
"""Where a worker decodes kept JPEG tiles: on its host's cores (imagecodecs), or on its GPU."""

DecodeRequest = Literal["auto", "cpu", "device"]
"""What a run asks for: the worker's best (`auto`), the host always, or torchvision on the
model's device always (on a CPU device: torchvision's own libjpeg, used to test that path)."""

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# APP14 "Adobe", version 100, flags 0, 0, transform 0: the components are RGB, not YCbCr
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def full_stream(data: bytes | NDArray[np.uint8], tables: bytes | None, rgb_as_is: bool) -> bytes:
    """A standalone JPEG from a stored tile's stream, the level's shared tables (TIFF
    JPEGTables, or None) and whether its colour is RGB stored without a marker."""
    body = bytes(data)
    if not body.startswith(_SOI):
        raise ValueError("not a JPEG stream (no start-of-image marker)")
    head = _SOI
    if rgb_as_is:
        head += _ADOBE_RGB
    if tables:  # SOI, tables, EOI: the tables without their own start and end
        inner = tables[2:-2] if tables.startswith(_SOI) and tables.endswith(_EOI) else tables
        head += inner
    return head + body[2:]


def choose_decode(
    device_type: str, kept_jpeg: bool, device_decode: bool, requested: DecodeRequest = "auto"
) -> JpegDecode | Literal["torchvision"] | None:
    """Where a worker decodes a block's tiles (pure): None when the store holds RGB (nothing to
    decode); `nvjpeg` on a CUDA device whose torchvision decodes there (`device_decode`), unless
    the run asks for the host; `torchvision` on any other device when the run asks for it (the
    same code as nvJPEG's, on the CPU); else `cpu`."""
    if not kept_jpeg:
        return None
    if requested == "cpu":
        return "cpu"
    if device_type == "cuda" and device_decode:
        return "nvjpeg"
    if requested == "device" and device_type == "cpu":
        return "torchvision"
    return "cpu"


@functools.cache
def device_decode_available(device_type: str) -> bool:
    """Whether torchvision decodes JPEG on this kind of device here (CUDA needs a torchvision
    built with nvJPEG; tried once with a one-pixel JPEG)."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return False
    if device_type == "cpu":
        return True
    if device_type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        decode_jpeg(torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8), device="cuda")
    except (RuntimeError, NotImplementedError):
        return False
    return True


def decode_jpegs(streams: Sequence[bytes], device: torch.device | str) -> list[torch.Tensor]:
    """Decode standalone JPEG streams (`full_stream`) on `device` in one batched call: each
    (3, h, w) uint8 RGB on that device. Raises the decoder's error on corrupt data."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not streams:
        return []
    data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
    return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def _tiny_jpeg() -> bytes:
    """A valid 8×8 grey JPEG, made once with PIL (for the availability probe)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, format="JPEG")
    return buf.getvalue()
