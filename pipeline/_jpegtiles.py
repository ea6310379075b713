"""Tiles kept as the slide's own JPEG data.

When the tile grid lines up with a pyramid level's stored JPEG tiles (same size, same origin, no
resizing, no overlap), each of slidemill's tiles *is* one stored tile. Tiling then copies the
stored bytes into the Zarr store instead of decoding them and writing raw RGB, which is ~8× the
bytes; the encoder side decodes them with the same decoder and arguments as the direct reader,
so the pixels are bit-identical to decoding at tiling time.

In the store a block of tiles is one (n, slot) uint8 chunk of JPEG streams padded with zeros to
the level's largest stored tile (`slot`), plus each tile's byte count; plain Zarr dtypes that
any Zarr v3 reader opens. The decode parameters live in the arrays' attributes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import imagecodecs
import numpy as np
from numpy.typing import NDArray

from pipeline.errors import UnreadableSlideError


@dataclass(frozen=True, slots=True)
class JpegTiles:
    """How one level's stored JPEG tiles are kept and decoded."""

    level: int
    """Pyramid level the tiles come from."""
    tile_px: int
    """Edge of a stored tile (= slidemill's tile)."""
    slot_bytes: int
    """Largest stored tile of the level, in bytes: the width of a row in the store."""
    tables: str
    """The level's shared JPEG tables (TIFF JPEGTables), base64; '' when tiles carry their own."""
    rgb_as_is: bool
    """Colour is stored as RGB, not YCbCr, without a marker saying so (Aperio)."""

    @property
    def tables_bytes(self) -> bytes | None:
        return base64.b64decode(self.tables) if self.tables else None

    def attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> JpegTiles:
        return cls(
            level=int(attrs["level"]),
            tile_px=int(attrs["tile_px"]),
            slot_bytes=int(attrs["slot_bytes"]),
            tables=str(attrs["tables"]),
            rgb_as_is=bool(attrs["rgb_as_is"]),
        )


def pack(blobs: Sequence[bytes], slot: int) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """Stored tiles as zero-padded rows of `slot` bytes, and their lengths (0 = glass)."""
    data = np.zeros((len(blobs), slot), dtype=np.uint8)
    nbytes = np.empty(len(blobs), dtype=np.int32)
    for k, blob in enumerate(blobs):
        if len(blob) > slot:
            raise ValueError(f"stored tile of {len(blob)} bytes exceeds the {slot}-byte slot")
        data[k, : len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        nbytes[k] = len(blob)
    return data, nbytes


def decode_into(
    spec: JpegTiles,
    data: NDArray[np.uint8],
    nbytes: NDArray[np.int32],
    out: NDArray[np.uint8],
    source: str,
) -> None:
    """Decode packed tiles into `out` (n, tile_px, tile_px, 3). A tile of 0 bytes was never
    written by the scanner and is white (glass), as the direct reader and OpenSlide give it."""
    tables = spec.tables_bytes
    for k in range(len(nbytes)):
        n = int(nbytes[k])
        if n == 0:
            out[k] = 255
            continue
        try:
            # the direct reader's call, argument for argument: the pixels are the same
            imagecodecs.jpeg_decode(
                data[k, :n],  # type: ignore[arg-type]  # any contiguous buffer: no copy
                tables=tables,
                colorspace=2 if spec.rgb_as_is else None,
                outcolorspace=2,
                shape=(spec.tile_px, spec.tile_px),
                out=out[k],
            )
        except Exception as err:  # corrupt data, whatever exception the codec raises
            raise UnreadableSlideError(
                f"{source}: cannot decode kept JPEG tile {k}: {err}"
            ) from err


def decode(
    spec: JpegTiles, data: NDArray[np.uint8], nbytes: NDArray[np.int32], source: str
) -> NDArray[np.uint8]:
    out = np.empty((len(nbytes), spec.tile_px, spec.tile_px, 3), dtype=np.uint8)
    decode_into(spec, data, nbytes, out, source)
    return out
