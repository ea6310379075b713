"""The per-slide Zarr v3 store and the output folders.

Layout of `<out>/<slide_id>/slide.zarr` (N tiles, C classes, D feature dims, T tile px):

    coords          (N, 2) int64    level-0 x, y of each tile's top-left corner
    grid_index      (N, 2) int32    tile grid row, column
    tissue_fraction (N,)   float32
    tiles           (N, T, T, 3) uint8   one task's block per chunk (lz4)
  or, when tiles are cut from a level stored as JPEG tiles without resizing
  (`JpegTiles`), the stored tiles themselves, M of them:
    tile_jpeg       (M, S) uint8    stored JPEG streams, zero-padded to S bytes; the layout and
                                    decode parameters in its attributes; one block per chunk
    tile_jpeg_rows  (M, 2) int64    the stored tile each row holds (-1 = unused row) and the
                                    length of its stream (0 = glass, white)
    features        (N, D) float32
    attention       (N,)   float32
    scores          (N, C) float32  per-tile class probabilities
    heatmap         (C, rows, cols) float32, NaN off tissue
    thumbnail       (h, w, 3) uint8 the slide pyramid at `tissue_mpp` (never the label/macro)
    tissue_mask     (h, w) bool

Tile pixels (`tiles` or `tile_jpeg*`) are removed when the slide is published unless the run
keeps them (`drop_tiles`).

A slide is built under `<out>/.partial/<slide_id>/` and renamed into place when complete, so a
folder `<out>/<slide_id>/` is always whole.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import zarr
from cachetools import LRUCache
from numpy.typing import NDArray
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.core.array_spec import ArrayConfigParams

from slidemill.pipeline.graph._owned import check_slide_folder, mark_slide
from slidemill.pipeline.slides import JpegTiles, PackedBlock, decode_block, decode_block_tensor
from slidemill.schemas import SlideStoreAttrs
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import (
    PARTIAL_DIR,
    STORE_ATTRS_KEY,
    TILE_ARRAYS,
    StoreArray,
)

# Tiles are a cache of the slide, not an archive: write speed first. Of the layouts tried (zstd-1
# and blosc-lz4; 1-tile, 16-tile and whole-block chunks; with and without a shard per block),
# lz4 in one chunk per block, no shard, writes fastest, compressing a little less than zstd.
# Every reader of `tiles` reads whole blocks, so nothing is lost by the coarser chunk.
TILE_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.noshuffle)


def work_dir(out: Path, slide_id: str) -> Path:
    return out / PARTIAL_DIR / slide_id


def final_dir(out: Path, slide_id: str) -> Path:
    return out / slide_id


def fresh_work_dir(out: Path, slide_id: str) -> Path:
    """An empty, marked work folder for a slide (leftovers of an earlier attempt are removed)."""
    path = work_dir(out, slide_id)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    mark_slide(path)
    return path


def publish(out: Path, slide_id: str, src: Path | None = None) -> Path:
    """Move a finished folder (by default the slide's work folder) into place, replacing an
    earlier result of the same slide; `SlideFolderNotOursError` when the folder in place is
    not a slide folder slidemill built (nothing is moved)."""
    src = src or work_dir(out, slide_id)
    dst = final_dir(out, slide_id)
    check_slide_folder(out, slide_id)
    old = None
    if dst.exists():
        old = out / PARTIAL_DIR / f"{slide_id}.old-{uuid.uuid4().hex[:8]}"
        dst.replace(old)
    src.replace(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


PROGRESS = "progress"


def mark_done(work: Path, name: str, seconds: float) -> None:
    """Record that a unit of work (e.g. `tile-256`) finished, after its data is written."""
    folder = work / PROGRESS
    folder.mkdir(exist_ok=True)
    write_atomic(folder / name, f"{seconds:.6f}\n")


def is_done(work: Path, name: str) -> bool:
    return (work / PROGRESS / name).is_file()


def clear_progress(work: Path) -> None:
    """Remove the resume bookkeeping before a slide is published."""
    shutil.rmtree(work / PROGRESS, ignore_errors=True)


def create_store(
    path: Path,
    attrs: SlideStoreAttrs,
    *,
    n_tiles: int,
    tile_px: int,
    tiles_per_block: int,
    feature_dim: int,
    n_classes: int,
    jpeg: JpegTiles | None = None,
) -> zarr.Group:
    """Create the group and every per-tile array, empty, with its final shape and chunking.
    With `jpeg`, tiles are kept as the slide's stored JPEG streams instead of RGB."""
    root = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    root.attrs[STORE_ATTRS_KEY] = attrs.model_dump(mode="json")
    n = max(n_tiles, 1)
    # one task's tiles per chunk, so no two tasks ever write the same chunk; never larger than the
    # array, or a small slide would write padding
    block = max(1, min(tiles_per_block, n_tiles))
    root.create_array(StoreArray.COORDS, shape=(n_tiles, 2), dtype="int64", chunks=(n, 2))
    root.create_array(StoreArray.GRID_INDEX, shape=(n_tiles, 2), dtype="int32", chunks=(n, 2))
    root.create_array(StoreArray.TISSUE_FRACTION, shape=(n_tiles,), dtype="float32", chunks=(n,))
    if jpeg is not None:
        rows = jpeg.n_rows
        per_chunk = block if jpeg.one_to_one else jpeg.block_rows
        slot = jpeg.stored.slot_bytes
        # JPEG data does not compress; lz4 removes the zero padding at almost no cost
        stored = root.create_array(
            StoreArray.TILE_JPEG,
            shape=(rows, slot),
            dtype="uint8",
            chunks=(per_chunk, slot),
            compressors=TILE_CODEC,
        )
        stored.attrs.update(jpeg.attrs())
        # one array for both: each array read pays zarr's fixed per-read overhead, which for an
        # array this small outweighs the data
        root.create_array(
            StoreArray.TILE_JPEG_ROWS, shape=(rows, 2), dtype="int64", chunks=(per_chunk, 2)
        )
    else:
        root.create_array(
            StoreArray.TILES,
            shape=(n_tiles, tile_px, tile_px, 3),
            dtype="uint8",
            chunks=(block, tile_px, tile_px, 3),
            compressors=TILE_CODEC,
        )
    root.create_array(
        StoreArray.FEATURES,
        shape=(n_tiles, feature_dim),
        dtype="float32",
        chunks=(block, feature_dim),
    )
    for name in (StoreArray.QC_BLUR, StoreArray.QC_PEN, StoreArray.QC_BACKGROUND):
        # written per block by the encode task, which holds the decoded pixels
        root.create_array(name, shape=(n_tiles,), dtype="float32", chunks=(block,))
    if n_classes:  # a features-only run has no head outputs
        root.create_array(StoreArray.ATTENTION, shape=(n_tiles,), dtype="float32", chunks=(n,))
        root.create_array(
            StoreArray.SCORES, shape=(n_tiles, n_classes), dtype="float32", chunks=(n, n_classes)
        )
    return root


def write_array(path: Path, name: str, data: NDArray[np.generic]) -> None:
    """Create (or replace) a whole small array in the store."""
    root = zarr.open_group(store=str(path), mode="r+")
    arr = root.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        fill_value=np.nan if data.dtype.kind == "f" else 0,
        # one lz4 chunk, not zarr's default zstd in many chunks: these are read whole, and the
        # plan writes a slide's thumbnail on the critical path
        chunks=tuple(max(1, n) for n in data.shape),
        compressors=TILE_CODEC,
        overwrite=True,
    )
    arr[...] = data


# zarr's default (write_empty_chunks False) compares every chunk and every shard with the fill
# value before encoding it: two full passes over the block before any of it is encoded. Every
# block is written whole, so "empty" chunks are simply data.
_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


# Arrays opened, by folder and mode. Opening one reads and validates its zarr.json, which costs
# as much as reading a block of a small array, and a worker opens the same few arrays block after
# block. An Array holds only its metadata and path, so a cached one is right while zarr.json says
# the same; reading the file back, far cheaper than validating it, catches an array rebuilt under
# the same path (a slide planned again), which file times are too coarse to.
_OPENED: LRUCache[tuple[str, bool], tuple[bytes, zarr.Array]] = LRUCache(maxsize=64)
_opened_lock = threading.Lock()


def _array(path: Path, write: bool = False) -> zarr.Array:
    # FileNotFoundError for a missing array, as zarr raises
    ident, key = (path / "zarr.json").read_bytes(), (str(path), write)
    with _opened_lock:
        hit = _OPENED.get(key)  # marks it most recently used
        if hit is not None and hit[0] == ident:
            return hit[1]
    arr = zarr.open_array(store=str(path), mode="r+" if write else "r")
    if write:
        arr = arr.with_config(_WRITE_CONFIG)
    with _opened_lock:
        _OPENED[key] = (ident, arr)
    return arr


def write_block(path: Path, name: str, start: int, data: NDArray[np.generic]) -> None:
    """Write rows [start, start + len(data)) of a per-tile array."""
    _array(path / name, write=True)[start : start + data.shape[0]] = data


def read_block(path: Path, name: str, start: int, stop: int) -> NDArray[np.generic]:
    return np.asarray(_array(path / name)[start:stop])


def drop_tiles(path: Path) -> None:
    """Remove the tile pixels from a store (coordinates, features and scores stay): they grow
    with the tissue area (3 bytes per pixel as RGB, before compression), and a night's batch of
    kept tiles would fill a disk."""
    for name in TILE_ARRAYS:
        shutil.rmtree(path / name, ignore_errors=True)


def jpeg_layout(path: Path) -> JpegTiles | None:
    """How the store keeps tiles as stored JPEG, or None when it holds RGB `tiles`."""
    if not (path / StoreArray.TILE_JPEG / "zarr.json").is_file():
        return None
    return JpegTiles.from_attrs(dict(_array(path / StoreArray.TILE_JPEG).attrs))


def write_jpeg_block(path: Path, spec: JpegTiles, start: int, block: PackedBlock) -> None:
    """Write the kept stored tiles of the block starting at tile `start`."""
    row = spec.rows_of(start // spec.block_tiles)[0]
    write_block(path, StoreArray.TILE_JPEG, row, block.data)
    write_block(path, StoreArray.TILE_JPEG_ROWS, row, np.stack([block.index, block.nbytes], 1))


def _kept_blocks(
    path: Path, spec: JpegTiles, start: int, stop: int
) -> Iterator[tuple[int, int, PackedBlock, NDArray[np.int64] | None]]:
    """The whole blocks of kept JPEG tiles that tiles [start, stop) lie in, as (first tile,
    stop tile, its rows, its tiles' coordinates for a mosaic)."""
    # every array read pays zarr's fixed per-read overhead on top of the decoding: each is
    # read once for the whole range, and coordinates only where a mosaic needs them
    bt = spec.block_tiles
    first, last = start // bt * bt, min(-(-stop // bt) * bt, spec.n_tiles)  # whole blocks
    r0, r1 = spec.rows_of(first // bt)[0], spec.rows_of((last - 1) // bt)[1]
    data = np.asarray(read_block(path, StoreArray.TILE_JPEG, r0, r1), dtype=np.uint8)
    rows = np.asarray(read_block(path, StoreArray.TILE_JPEG_ROWS, r0, r1), dtype=np.int64)
    coords = None if spec.one_to_one else read_block(path, StoreArray.COORDS, first, last)
    for b0 in range(first, last, bt):
        b1 = min(b0 + bt, last)
        q0, q1 = (r - r0 for r in spec.rows_of(b0 // bt))
        block = PackedBlock(data[q0:q1], rows[q0:q1, 1].astype(np.int32), rows[q0:q1, 0])
        xy = None if coords is None else np.asarray(coords[b0 - first : b1 - first], np.int64)
        yield b0, b1, block, xy


def read_tile_pixels(
    path: Path, start: int, stop: int, source: str, out: NDArray[np.uint8] | None = None
) -> NDArray[np.uint8]:
    """Tiles [start, stop) as (n, T, T, 3) RGB, whichever way the store keeps them; `source`
    names the slide in errors. Kept JPEG tiles are decoded into `out` when given (a buffer
    reused between blocks spares a page fault per 4 KiB of a fresh 50 MB array)."""
    spec = jpeg_layout(path)
    if spec is None:
        return np.asarray(read_block(path, StoreArray.TILES, start, stop), dtype=np.uint8)
    stop = min(stop, spec.n_tiles)  # as slicing `tiles` would
    shape = (max(stop - start, 0), spec.tile_px, spec.tile_px, 3)
    if out is None or out.shape != shape:
        out = np.empty(shape, dtype=np.uint8)
    if not len(out):
        return out
    for b0, b1, block, xy in _kept_blocks(path, spec, start, stop):
        lo, hi = max(b0, start), min(b1, stop)
        if (lo, hi) == (b0, b1):  # the usual case: a whole block, decoded in place
            decode_block(spec, block, xy, out[lo - start : hi - start], source)
            continue
        whole = np.empty((b1 - b0, *shape[1:]), dtype=np.uint8)
        decode_block(spec, block, xy, whole, source)
        out[lo - start : hi - start] = whole[lo - b0 : hi - b0]
    return out


def read_tile_tensor(
    path: Path, start: int, stop: int, source: str, device: torch.device | str
) -> torch.Tensor:
    """Kept JPEG tiles [start, stop) decoded on `device` (nvJPEG on CUDA) into (n, 3, T, T)
    uint8 RGB there, the encoder's input; `source` names the slide in errors. Only for a store
    that keeps JPEG (`jpeg_layout`)."""
    spec = jpeg_layout(path)
    if spec is None:
        raise ValueError(f"{path}: holds RGB tiles, no JPEG to decode on a device")
    stop = min(stop, spec.n_tiles)
    if start >= stop:
        t = spec.tile_px
        return torch.empty((0, 3, t, t), dtype=torch.uint8, device=device)
    parts = [
        decode_block_tensor(spec, block, xy, device, source)[max(b0, start) - b0 : stop - b0]
        for b0, _, block, xy in _kept_blocks(path, spec, start, stop)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def read_all(path: Path, name: str) -> NDArray[np.generic]:
    return np.asarray(zarr.open_array(store=str(path / name), mode="r")[...])


def read_attrs(path: Path) -> SlideStoreAttrs:
    root = zarr.open_group(store=str(path), mode="r")
    return SlideStoreAttrs.model_validate(root.attrs[STORE_ATTRS_KEY])
