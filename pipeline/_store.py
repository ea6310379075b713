"""The per-slide Zarr v3 store and the output folders.

Layout of `<out>/<slide_id>/slide.zarr` (N tiles, C classes, D feature dims, T tile px):

    coords          (N, 2) int64    level-0 x, y of each tile's top-left corner
    grid_index      (N, 2) int32    tile grid row, column
    tissue_fraction (N,)   float32
    tiles           (N, T, T, 3) uint8   one task's block per chunk (lz4)
  or, when the grid lines up with the slide's stored JPEG tiles (`pipeline._jpegtiles`):
    tile_jpeg       (N, S) uint8    each tile's stored JPEG stream, zero-padded to S bytes;
                                    decode parameters in its attributes; one block per chunk
    tile_jpeg_nbytes (N,) int32     length of each stream (0 = glass, white)
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
import uuid
from pathlib import Path

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.core.array_spec import ArrayConfigParams

from pipeline._jpegtiles import JpegTiles
from pipeline._jpegtiles import decode_into as decode_jpeg_into
from schemas import SlideStoreAttrs

STORE_NAME = "slide.zarr"
# Tiles are a cache of the slide, not an archive: write speed first. Measured on 256-px H&E tiles
# (2 cores, before `write_empty_chunks`): zstd-1 in 1-tile chunks 1.09 ms/tile (2.77× smaller),
# zstd-1 in 16-tile chunks 0.82 ms, blosc-lz4 in 16-tile chunks 0.61 ms (2.46× smaller). With
# `write_empty_chunks` (below) lz4 in 16-tile chunks inside one shard per block took 0.28 ms/tile
# on the sample slide's tiles; one chunk per block, no shard, 0.21 ms at the same 2.2× ratio.
# Every reader of `tiles` reads whole blocks, so nothing is lost by the coarser chunk.
TILE_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.noshuffle)
PARTIAL = ".partial"
_ATTRS_KEY = "slidemill"


def work_dir(out: Path, slide_id: str) -> Path:
    return out / PARTIAL / slide_id


def final_dir(out: Path, slide_id: str) -> Path:
    return out / slide_id


def fresh_work_dir(out: Path, slide_id: str) -> Path:
    """An empty work folder for a slide (leftovers of an earlier attempt are removed)."""
    path = work_dir(out, slide_id)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish(out: Path, slide_id: str, src: Path | None = None) -> Path:
    """Move a finished folder (by default the slide's work folder) into place, replacing an
    earlier result of the same slide."""
    src = src or work_dir(out, slide_id)
    dst = final_dir(out, slide_id)
    old = None
    if dst.exists():
        old = out / PARTIAL / f"{slide_id}.old-{uuid.uuid4().hex[:8]}"
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
    tmp = folder / f".{name}.tmp"
    tmp.write_text(f"{seconds:.6f}\n")
    tmp.replace(folder / name)


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
    root.attrs[_ATTRS_KEY] = attrs.model_dump(mode="json")
    n = max(n_tiles, 1)
    # one task's tiles per chunk, so no two tasks ever write the same chunk; never larger than the
    # array, or a small slide would write padding
    block = max(1, min(tiles_per_block, n_tiles))
    root.create_array("coords", shape=(n_tiles, 2), dtype="int64", chunks=(n, 2))
    root.create_array("grid_index", shape=(n_tiles, 2), dtype="int32", chunks=(n, 2))
    root.create_array("tissue_fraction", shape=(n_tiles,), dtype="float32", chunks=(n,))
    if jpeg is not None:
        # JPEG data does not compress; lz4 removes the zero padding at almost no cost
        stored = root.create_array(
            "tile_jpeg",
            shape=(n_tiles, jpeg.slot_bytes),
            dtype="uint8",
            chunks=(block, jpeg.slot_bytes),
            compressors=TILE_CODEC,
        )
        stored.attrs.update(jpeg.attrs())
        root.create_array("tile_jpeg_nbytes", shape=(n_tiles,), dtype="int32", chunks=(block,))
    else:
        root.create_array(
            "tiles",
            shape=(n_tiles, tile_px, tile_px, 3),
            dtype="uint8",
            chunks=(block, tile_px, tile_px, 3),
            compressors=TILE_CODEC,
        )
    root.create_array(
        "features", shape=(n_tiles, feature_dim), dtype="float32", chunks=(block, feature_dim)
    )
    if n_classes:  # a features-only run has no head outputs
        root.create_array("attention", shape=(n_tiles,), dtype="float32", chunks=(n,))
        root.create_array(
            "scores", shape=(n_tiles, n_classes), dtype="float32", chunks=(n, n_classes)
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
        overwrite=True,
    )
    arr[...] = data


# zarr's default (write_empty_chunks False) compares every chunk and every shard with the fill
# value before encoding it: two full passes over the block, 30-40% of the time a 256-tile shard
# takes to write. Every block is written whole, so "empty" chunks are simply data.
_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


def write_block(path: Path, name: str, start: int, data: NDArray[np.generic]) -> None:
    """Write rows [start, start + len(data)) of a per-tile array."""
    arr = zarr.open_array(store=str(path / name), mode="r+").with_config(_WRITE_CONFIG)
    arr[start : start + data.shape[0]] = data


def read_block(path: Path, name: str, start: int, stop: int) -> NDArray[np.generic]:
    arr = zarr.open_array(store=str(path / name), mode="r")
    return np.asarray(arr[start:stop])


TILE_ARRAYS = ("tiles", "tile_jpeg", "tile_jpeg_nbytes")


def drop_tiles(path: Path) -> None:
    """Remove the tile pixels from a store (coordinates, features and scores stay): at ~1-3 GB
    per gigapixel of tissue, a night's batch of kept tiles would fill a disk."""
    for name in TILE_ARRAYS:
        shutil.rmtree(path / name, ignore_errors=True)


def read_tile_pixels(
    path: Path, start: int, stop: int, source: str, out: NDArray[np.uint8] | None = None
) -> NDArray[np.uint8]:
    """Tiles [start, stop) as (n, T, T, 3) RGB, whichever way the store keeps them; `source`
    names the slide in errors. Kept JPEG tiles are decoded into `out` when given (a buffer
    reused between blocks spares a page fault per 4 KiB of a fresh 50 MB array)."""
    if (path / "tile_jpeg" / "zarr.json").is_file():
        arr = zarr.open_array(store=str(path / "tile_jpeg"), mode="r")
        spec = JpegTiles.from_attrs(dict(arr.attrs))
        nbytes = np.asarray(read_block(path, "tile_jpeg_nbytes", start, stop), dtype=np.int32)
        data = np.asarray(arr[start:stop])
        shape = (len(nbytes), spec.tile_px, spec.tile_px, 3)
        if out is None or out.shape != shape:
            out = np.empty(shape, dtype=np.uint8)
        decode_jpeg_into(spec, data, nbytes, out, source)
        return out
    return np.asarray(read_block(path, "tiles", start, stop), dtype=np.uint8)


def read_all(path: Path, name: str) -> NDArray[np.generic]:
    return np.asarray(zarr.open_array(store=str(path / name), mode="r")[...])


def read_attrs(path: Path) -> SlideStoreAttrs:
    root = zarr.open_group(store=str(path), mode="r")
    return SlideStoreAttrs.model_validate(root.attrs[_ATTRS_KEY])


def write_attrs(path: Path, attrs: SlideStoreAttrs) -> None:
    root = zarr.open_group(store=str(path), mode="r+")
    root.attrs[_ATTRS_KEY] = attrs.model_dump(mode="json")
