"""Read a block of planned tiles from a slide at the target resolution.

OpenSlide's cost is mostly per call, not per pixel, so a block is read as a few wide strips, one
per run of neighbouring tiles in a grid row, each resized once and then sliced into tiles. A
reader with no per-call cost (`read_region_into`) fills each tile of the block in place when no
resizing is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from slidemill.pipeline.slides import (
    JpegTiles,
    LevelChoice,
    PackedBlock,
    SlideReader,
    StoredJpeg,
    choose_layout,
    gather_block,
    moved_error,
)
from slidemill.pipeline.tissue import origin

# Longest run of tiles read in one call: bounds a strip's memory (~32 × 256² × 4 B = 8 MB).
MAX_RUN = 32


@dataclass(frozen=True, slots=True)
class Run:
    """Tiles of one grid row with consecutive columns, read as one strip."""

    row: int
    """Grid row."""
    col: int
    """Grid column of the first tile."""
    length: int
    """Number of tiles."""
    offset: int
    """Index of the first tile within the block."""


def runs(rows: NDArray[np.int64], cols: NDArray[np.int64], max_run: int = MAX_RUN) -> list[Run]:
    """Split tiles (row-major, as planned) into runs of consecutive columns in one row."""
    out: list[Run] = []
    start = 0
    for i in range(1, len(rows) + 1):
        if (
            i == len(rows)
            or rows[i] != rows[start]
            or cols[i] != cols[i - 1] + 1
            or i - start == max_run
        ):
            if len(rows):
                out.append(Run(int(rows[start]), int(cols[start]), i - start, start))
            start = i
    return out


class _RegionInto(Protocol):
    """Readers that write a region into a caller's array (`TiffDirectReader`)."""

    def direct_levels(self) -> list[int]: ...

    def read_region_into(
        self, location: tuple[int, int], level: int, out: NDArray[np.uint8]
    ) -> None: ...


class _StoredJpeg(Protocol):
    """Readers that hand out a level's stored JPEG tiles as bytes (`TiffDirectReader`)."""

    def direct_levels(self) -> list[int]: ...

    def jpeg_tiles(self, level: int) -> StoredJpeg | None: ...

    def stored_bytes(self, level: int, index: int) -> bytes: ...


def keepable_jpeg(
    reader: SlideReader,
    choice: LevelChoice,
    tile_px: int,
    coords: NDArray[np.int64],
    block_tiles: int,
) -> JpegTiles | None:
    """How to keep tiles at level-0 `coords` as the slide's stored JPEG streams, when they are
    read from a level stored as JPEG tiles without resizing (`choose_layout`); else None."""
    if not hasattr(reader, "jpeg_tiles"):
        return None
    stored = cast(_StoredJpeg, reader)
    if choice.level not in stored.direct_levels():
        return None
    if abs(choice.tile_level0 / choice.level_downsample - tile_px) > 1e-6:
        return None
    level = stored.jpeg_tiles(choice.level)
    if level is None:
        return None
    return choose_layout(level, tile_px, coords, block_tiles)


def read_stored_jpeg(
    reader: SlideReader, spec: JpegTiles, coords: NDArray[np.int64], source: str
) -> PackedBlock:
    """The stored JPEG streams a block of tiles at level-0 `coords` keeps, for a layout
    `keepable_jpeg` chose; `source` names the slide in errors."""
    stored = cast(_StoredJpeg, reader)
    if stored.jpeg_tiles(spec.stored.level) != spec.stored:
        raise moved_error(source)
    level = spec.stored.level
    return gather_block(spec, coords, lambda i: stored.stored_bytes(level, i), source)


def read_tiles(
    reader: SlideReader,
    choice: LevelChoice,
    stride_level0: float,
    tile_px: int,
    stride_px: int,
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
) -> NDArray[np.uint8]:
    """Tiles at (rows, cols) of the grid, as (n, tile_px, tile_px, 3) uint8 RGB."""
    out = np.empty((len(rows), tile_px, tile_px, 3), dtype=np.uint8)
    ds = choice.level_downsample
    direct = cast(_RegionInto, reader) if hasattr(reader, "read_region_into") else None
    if (
        direct is not None
        and choice.level in direct.direct_levels()  # OpenSlide's levels keep the strips
        and abs(choice.tile_level0 / ds - tile_px) < 1e-6
    ):
        # no resizing and no per-call cost to amortise: each tile goes straight into the block
        xs = origin(cols, stride_level0).tolist()
        ys = origin(rows, stride_level0).tolist()
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            direct.read_region_into((x, y), choice.level, out[k])
        return out
    for run in runs(rows, cols):
        x0 = int(origin(np.array([run.col]), stride_level0)[0])
        y0 = int(origin(np.array([run.row]), stride_level0)[0])
        width_px = (run.length - 1) * stride_px + tile_px  # the strip at the target resolution
        width_level0 = (run.length - 1) * stride_level0 + choice.tile_level0
        size = (
            max(1, math.ceil(width_level0 / ds - 1e-6)),
            max(1, math.ceil(choice.tile_level0 / ds - 1e-6)),
        )
        strip = reader.read_region((x0, y0), choice.level, size)
        if size != (width_px, tile_px):
            strip = np.asarray(
                Image.fromarray(strip).resize((width_px, tile_px), Image.Resampling.BILINEAR)
            )
        for k in range(run.length):
            out[run.offset + k] = strip[:, k * stride_px : k * stride_px + tile_px]
    return out
