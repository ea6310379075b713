"""Tiles kept as the slide's own JPEG data.

When tiles are read from a pyramid level stored as JPEG tiles without resizing, tiling can copy
the stored bytes into the Zarr store instead of decoding them and writing raw RGB (compressed
JPEG, many times smaller), and leave the decode to the encoder side. Both sides decode through
`decode_stored`, so the pixels are bit-identical to decoding at tiling time.

Two layouts, both plain Zarr v3 arrays of JPEG streams zero-padded to the level's largest stored
tile (`slot_bytes`), with each stream's length and stored-tile index beside it:

- **one to one**: the grid lines up with the stored tiles (same size, same origin, no overlap),
  so each of slidemill's tiles *is* one stored tile: row k holds tile k, and decoding writes
  straight into the tile.
- **mosaic**: any other grid at a stored level's own resolution (another tile size, an offset,
  overlap). A block's rows hold the stored tiles its tiles overlap, each once, sorted; the
  decode assembles the tiles from them. Every block has `block_rows` rows (unused ones have
  index -1), so block b's rows are [b × block_rows, (b + 1) × block_rows).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from numpy.typing import NDArray
from pydantic import TypeAdapter

from slidemill.pipeline.errors import UnreadableSlideError

# A mosaic must not decode much more than it delivers: a block whose stored tiles hold more than
# this many times its tiles' pixels (sparse tissue under large stored tiles) is decoded at tiling
# time instead, where the reader's cache shares stored tiles between blocks.
MAX_DECODE_RATIO = 4.0
# Nor hold more than this much decoded stored tiles per block (per encoding thread).
MAX_SCRATCH_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class StoredJpeg:
    """A pyramid level stored as square JPEG tiles that decode straight to RGB."""

    level: int
    """Pyramid level."""
    stored_px: int
    """Edge of a stored tile."""
    across: int
    """Stored tiles per row of the level."""
    level_size: tuple[int, int]
    """Width and height of the level; beyond it is white, as OpenSlide gives it."""
    downsample: float
    """Level-0 pixels per level pixel."""
    slot_bytes: int
    """Largest stored tile of the level, in bytes: the width of a row in the store."""
    tables: str
    """The level's shared JPEG tables (TIFF JPEGTables), base64; '' when tiles carry their own."""
    rgb_as_is: bool
    """Colour is stored as RGB, not YCbCr, without a marker saying so (Aperio)."""

    @property
    def tables_bytes(self) -> bytes | None:
        return base64.b64decode(self.tables) if self.tables else None


@dataclass(frozen=True, slots=True)
class JpegTiles:
    """How a slide's tiles are kept as its stored JPEG tiles (saved in the plan and in the
    store's attributes)."""

    stored: StoredJpeg
    """The level the tiles are cut from."""
    tile_px: int
    """Edge of slidemill's tile at that level."""
    block_tiles: int
    """Tiles per block (one tiling task, one chunk)."""
    block_rows: int
    """Rows of stored tiles per block in the store (= `block_tiles` one to one)."""
    one_to_one: bool
    """Each tile is exactly one stored tile; else a mosaic."""
    n_tiles: int
    """Tiles of the slide."""

    def attrs(self) -> dict[str, Any]:
        return _JPEG_TILES.dump_python(self, mode="json")

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> JpegTiles:
        return _JPEG_TILES.validate_python(attrs)

    @property
    def n_rows(self) -> int:
        """Rows of the store."""
        if self.one_to_one:
            return self.n_tiles
        return -(-self.n_tiles // self.block_tiles) * self.block_rows

    def rows_of(self, block: int) -> tuple[int, int]:
        """[start, stop) rows of the store that hold block `block`."""
        if self.one_to_one:
            start = block * self.block_tiles
            return start, min(start + self.block_tiles, self.n_tiles)
        return block * self.block_rows, (block + 1) * self.block_rows


# the same validation the saved plan gets (the graph's `SlidePlan`), for the store's copy
_JPEG_TILES: TypeAdapter[JpegTiles] = TypeAdapter(JpegTiles)


def decode_stored(
    data: bytes | NDArray[np.uint8],
    tables: bytes | None,
    rgb_as_is: bool,
    shape: tuple[int, int],
    out: NDArray[np.uint8],
) -> None:
    """Decode one stored JPEG tile into `out` (h, w, 3). The one call both the direct reader
    and the kept-JPEG decode make, so that their pixels are the same; raises whatever the codec
    raises on corrupt data."""
    imagecodecs.jpeg_decode(
        data,  # type: ignore[arg-type]  # any contiguous buffer: no copy
        tables=tables,
        # as tifffile decodes such pages: YCbCr converts to RGB; Aperio's RGB JPEG without a
        # JFIF marker must be told it is RGB already, or libjpeg would convert it as YCbCr
        colorspace=2 if rgb_as_is else None,
        outcolorspace=2,
        shape=shape,
        out=out,
    )


def level_origins(coords: NDArray[np.int64], downsample: float) -> NDArray[np.int64]:
    """Tiles' top-left corners at a level from their level-0 (x, y), rounded as the direct
    reader rounds a region's location."""
    return np.array(
        [(round(x / downsample), round(y / downsample)) for x, y in coords.tolist()],
        dtype=np.int64,
    ).reshape(-1, 2)


def _spans(lo: NDArray[np.int64], size: int, extent: int, px: int) -> tuple[NDArray, NDArray]:
    """For tiles covering [lo, lo + size) along one axis: candidate stored-tile positions (n, k)
    and which of them the tile overlaps inside [0, extent)."""
    a, b = np.clip(lo, 0, extent), np.clip(lo + size, 0, extent)
    cand = (a // px)[:, None] + np.arange(-(-size // px) + 1)
    valid = (cand <= ((b - 1) // px)[:, None]) & (b > a)[:, None]
    return cand, valid


def covering(stored: StoredJpeg, tile_px: int, origins: NDArray[np.int64]) -> NDArray[np.int64]:
    """Sorted indices of the stored tiles that tiles at `origins` (level px) overlap; parts
    outside the level are white and need none."""
    w, h = stored.level_size
    tx, vx = _spans(origins[:, 0], tile_px, w, stored.stored_px)
    ty, vy = _spans(origins[:, 1], tile_px, h, stored.stored_px)
    index = ty[:, :, None] * stored.across + tx[:, None, :]
    return np.unique(index[vy[:, :, None] & vx[:, None, :]])


def _lines_up(stored: StoredJpeg, tile_px: int, origins: NDArray[np.int64]) -> bool:
    s, (w, h) = stored.stored_px, stored.level_size
    x, y = origins[:, 0], origins[:, 1]
    return bool(
        tile_px == s
        and (x % s == 0).all()
        and (y % s == 0).all()
        and (np.minimum(x, y) >= 0).all()
        and (x + s <= w).all()
        and (y + s <= h).all()
    )


def choose_layout(
    stored: StoredJpeg, tile_px: int, coords: NDArray[np.int64], block_tiles: int
) -> JpegTiles | None:
    """How to keep tiles at level-0 `coords`, `tile_px` wide at the level (no resizing), as
    stored JPEG; None where a mosaic would decode too much more than it delivers (decode at
    tiling time instead)."""
    origins = level_origins(coords, stored.downsample)
    if _lines_up(stored, tile_px, origins):
        return JpegTiles(stored, tile_px, block_tiles, block_tiles, True, len(origins))
    rows = 1
    for start in range(0, len(origins), block_tiles):
        part = origins[start : start + block_tiles]
        n = len(covering(stored, tile_px, part))
        if n * stored.stored_px**2 > MAX_DECODE_RATIO * len(part) * tile_px**2:
            return None
        rows = max(rows, n)
    if rows * stored.stored_px**2 * 3 > MAX_SCRATCH_BYTES:
        return None
    return JpegTiles(stored, tile_px, block_tiles, rows, False, len(origins))


@dataclass(frozen=True, slots=True)
class PackedBlock:
    """One block's rows as stored: streams, their lengths (0 = glass) and stored indices
    (-1 = unused)."""

    data: NDArray[np.uint8]
    nbytes: NDArray[np.int32]
    index: NDArray[np.int64]


def pack(
    blobs: Sequence[bytes], slot: int, rows: int | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """Stored tiles as zero-padded rows of `slot` bytes, and their lengths (0 = glass), in
    `rows` rows (default: one per blob)."""
    rows = len(blobs) if rows is None else rows
    data = np.zeros((rows, slot), dtype=np.uint8)
    nbytes = np.zeros(rows, dtype=np.int32)
    for k, blob in enumerate(blobs):
        if len(blob) > slot:
            raise ValueError(f"stored tile of {len(blob)} bytes exceeds the {slot}-byte slot")
        data[k, : len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        nbytes[k] = len(blob)
    return data, nbytes


def gather_block(
    spec: JpegTiles,
    coords: NDArray[np.int64],
    read: Callable[[int], bytes],
    source: str,
) -> PackedBlock:
    """The rows a block of tiles at level-0 `coords` keeps, with `read(index)` giving a stored
    tile's bytes; `source` names the slide in errors."""
    s = spec.stored
    origins = level_origins(coords, s.downsample)
    if spec.one_to_one:
        if not _lines_up(s, spec.tile_px, origins):
            raise moved_error(source)
        index = (origins[:, 1] // s.stored_px) * s.across + origins[:, 0] // s.stored_px
    else:
        index = covering(s, spec.tile_px, origins)
        if len(index) > spec.block_rows:
            raise moved_error(source)
    rows = len(index) if spec.one_to_one else spec.block_rows
    data, nbytes = pack([read(int(i)) for i in index], s.slot_bytes, rows)
    padded = np.full(rows, -1, np.int64)
    padded[: len(index)] = index
    return PackedBlock(data, nbytes, padded)


def moved_error(source: str) -> UnreadableSlideError:
    """The error for a file whose stored tiles no longer match the plan made from it."""
    return UnreadableSlideError(
        f"{source}: the stored JPEG tiles no longer line up with the planned tile grid "
        "(was the file replaced during the run?)"
    )


def decode_rows(
    stored: StoredJpeg,
    data: NDArray[np.uint8],
    nbytes: NDArray[np.int32],
    out: NDArray[np.uint8],
    source: str,
) -> None:
    """Decode packed stored tiles into `out` (n, stored_px, stored_px, 3). A tile of 0 bytes
    was never written by the scanner and is white (glass), as the direct reader and OpenSlide
    give it."""
    tables, px = stored.tables_bytes, stored.stored_px
    for k in range(len(nbytes)):
        n = int(nbytes[k])
        if n == 0:
            out[k] = 255
            continue
        try:
            decode_stored(data[k, :n], tables, stored.rgb_as_is, (px, px), out[k])
        except Exception as err:  # corrupt data, whatever exception the codec raises
            raise UnreadableSlideError(
                f"{source}: cannot decode kept JPEG tile {k}: {err}"
            ) from err


# Per thread: the last mosaic's decoded stored tiles, whose memory the next block reuses (a fresh
# array costs a page fault per 4 KiB; see `_tiffdirect.SPARE_BYTES`).
_scratch = threading.local()


def _scratch_for(n: int, px: int) -> NDArray[np.uint8]:
    buf: NDArray[np.uint8] | None = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[1] != px or len(buf) < n:
        buf = np.empty((n, px, px, 3), dtype=np.uint8)
        _scratch.buf = buf
    return buf[:n]


def mosaic_copies(
    spec: JpegTiles, index: NDArray[np.int64], coords: NDArray[np.int64], source: str
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """How a mosaic block's tiles are assembled from its decoded stored tiles (pure): one row
    per copy, (tile k, stored row r, tile y0, y1, x0, x1, stored y0, y1, x0, x1), and which
    tiles reach outside the level (white there, as OpenSlide). `index` holds the block's used
    rows' stored-tile indices, the tiles lie at level-0 `coords`; `source` names the slide in
    errors."""
    s = spec.stored
    px, t, (w, h) = s.stored_px, spec.tile_px, s.level_size
    row_of = {int(i): r for r, i in enumerate(index.tolist())}
    ops: list[tuple[int, ...]] = []
    origins = level_origins(coords, s.downsample).tolist()
    outside = np.zeros(len(origins), dtype=bool)
    for k, (x0, y0) in enumerate(origins):
        xa, xb, ya, yb = max(x0, 0), min(x0 + t, w), max(y0, 0), min(y0 + t, h)
        outside[k] = (xa, ya, xb, yb) != (x0, y0, x0 + t, y0 + t)
        for ty in range(ya // px, (yb - 1) // px + 1 if yb > ya else ya // px):
            for tx in range(xa // px, (xb - 1) // px + 1 if xb > xa else xa // px):
                r = row_of.get(ty * s.across + tx)
                if r is None:
                    raise moved_error(source)
                sx0, sy0 = max(tx * px, xa), max(ty * px, ya)
                sx1, sy1 = min((tx + 1) * px, xb), min((ty + 1) * px, yb)
                ops.append(
                    (k, r, sy0 - y0, sy1 - y0, sx0 - x0, sx1 - x0,
                     sy0 - ty * px, sy1 - ty * px, sx0 - tx * px, sx1 - tx * px)
                )  # fmt: skip
    return np.array(ops, dtype=np.int64).reshape(-1, 10), outside


def decode_block(
    spec: JpegTiles,
    block: PackedBlock,
    coords: NDArray[np.int64] | None,
    out: NDArray[np.uint8],
    source: str,
) -> None:
    """Decode one block's rows into its tiles `out` (n, tile_px, tile_px, 3), the tiles lying at
    level-0 `coords` (a mosaic needs them; one to one, rows are tiles)."""
    s = spec.stored
    used = int((block.index >= 0).sum())
    if spec.one_to_one:
        decode_rows(s, block.data[:used], block.nbytes[:used], out, source)
        return
    if coords is None:
        raise ValueError("a mosaic's tiles need their coordinates")
    stored = _scratch_for(used, s.stored_px)
    decode_rows(s, block.data[:used], block.nbytes[:used], stored, source)
    ops, outside = mosaic_copies(spec, block.index[:used], coords, source)
    out[outside] = 255
    for k, r, ty0, ty1, tx0, tx1, sy0, sy1, sx0, sx1 in ops.tolist():
        out[k, ty0:ty1, tx0:tx1] = stored[r, sy0:sy1, sx0:sx1]
