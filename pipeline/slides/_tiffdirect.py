"""The fast path: decode a TIFF pyramid's stored tiles directly (tifffile + imagecodecs).

OpenSlide spends most of a `read_region` compositing and converting rather than decoding; for
TIFF-family slides whose levels are tiled pages in a codec tifffile decodes, reading the stored
tiles and copying them into the region skips that work. Levels, downsamples and mpp still come
from OpenSlide, so both paths describe the same pyramid, and any level this reader cannot decode
is delegated to OpenSlide.
"""

from __future__ import annotations

import base64
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from cachetools import LRUCache
from numpy.typing import NDArray

from slidemill.pipeline.errors import UnreadableSlideError
from slidemill.pipeline.slides._jpegtiles import StoredJpeg, decode_stored
from slidemill.pipeline.slides._readers import OpenSlideReader, register_reader

# OpenSlide vendors whose levels are plain tiled TIFF pages (NDPI, SCN, BIF... are TIFF too, but
# with layouts of their own: they stay with OpenSlide).
DIRECT_VENDORS = frozenset({"aperio", "generic-tiff"})
# Codecs decoded here: JPEG, none, LZW, Adobe deflate, deflate, zstd, webp.
DIRECT_COMPRESSIONS = frozenset({7, 1, 5, 8, 32946, 50000, 50001})
# Decoded stored tiles kept per slide: neighbouring strips share stored tiles at their edges.
CACHE_BYTES = 64 << 20
# Evicted tile arrays kept for the next decodes to write into. A fresh array per decode costs a
# page fault per 4 KiB on first write, a noticeable share of decoding one tile.
SPARE_BYTES = 32 << 20


class _TileCache(LRUCache):
    """Decoded stored tiles by (level, index), least recently used first out once they pass
    CACHE_BYTES; a tile pushed out is offered as a spare."""

    def __init__(self, keep_spare: Callable[[NDArray[np.uint8]], None]) -> None:
        super().__init__(maxsize=CACHE_BYTES, getsizeof=lambda tile: tile.nbytes)
        self._keep_spare = keep_spare

    def popitem(self) -> tuple[tuple[int, int], NDArray[np.uint8]]:
        key, tile = super().popitem()
        self._keep_spare(tile)
        return key, tile


class TiffDirectReader:
    """Reads tiled, directly decodable levels itself; delegates the rest to OpenSlide."""

    def __init__(self, osr: OpenSlideReader, pages: list[tifffile.TiffPage | None]) -> None:
        self.path = osr.path
        self._osr = osr
        self._pages = pages
        self._tif: tifffile.TiffFile | None = None
        self._fd = os.open(osr.path, os.O_RDONLY)
        self._spare: list[NDArray[np.uint8]] = []
        self._cache = _TileCache(self._keep_spare)
        self._lock = threading.Lock()

    @classmethod
    def try_open(cls, path: Path) -> TiffDirectReader | None:
        osr = OpenSlideReader.try_open(path)
        if osr is None:
            return None
        if osr.vendor not in DIRECT_VENDORS:
            osr.close()
            return None
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, OSError, ValueError):
            osr.close()
            return None
        pages: list[tifffile.TiffPage | None] = []
        candidates = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
        for width, height in osr.level_dimensions:
            match = next(
                (p for p in candidates if (p.imagewidth, p.imagelength) == (width, height)), None
            )
            pages.append(match if match is not None and _decodable(match) else None)
        if not any(pages):
            tif.close()
            osr.close()
            return None
        reader = cls(osr, pages)
        reader._tif = tif
        return reader

    # metadata: OpenSlide's, so both readers agree on the pyramid
    @property
    def dimensions(self) -> tuple[int, int]:
        return self._osr.dimensions

    @functools.cached_property
    def level_downsamples(self) -> tuple[float, ...]:
        # cached: each OpenSlide property is several ctypes calls, and reads ask per tile
        return self._osr.level_downsamples

    @functools.cached_property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._osr.level_dimensions

    @property
    def mpp(self) -> float | None:
        return self._osr.mpp

    def direct_levels(self) -> list[int]:
        """Levels decoded here rather than by OpenSlide."""
        return [i for i, p in enumerate(self._pages) if p is not None]

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        if self._pages[level] is None:
            return self._osr.read_region(location, level, size)
        out = np.empty((size[1], size[0], 3), dtype=np.uint8)
        self.read_region_into(location, level, out)
        return out

    def read_region_into(
        self, location: tuple[int, int], level: int, out: NDArray[np.uint8]
    ) -> None:
        """`read_region` written into `out` (height, width, 3), so a caller's block is filled
        without an intermediate array. A region that is exactly one stored JPEG tile is decoded
        straight into `out`."""
        page = self._pages[level]
        h, w = out.shape[:2]
        if page is None:
            out[...] = self._osr.read_region(location, level, (w, h))
            return
        index = self.stored_tile_index(location, level, (w, h))
        if index is not None:
            self._decode_into(level, page, index, out)
            return
        ds = self.level_downsamples[level]
        x0, y0 = round(location[0] / ds), round(location[1] / ds)
        lw, lh = self.level_dimensions[level]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        xa, xb = max(x0, 0), min(x0 + w, lw)
        ya, yb = max(y0, 0), min(y0 + h, lh)
        if (xa, ya, xb, yb) != (x0, y0, x0 + w, y0 + h):
            out[...] = 255  # outside the image is white, as OpenSlide
        if xa >= xb or ya >= yb:
            return
        for ty in range(ya // th, (yb - 1) // th + 1):
            for tx in range(xa // tw, (xb - 1) // tw + 1):
                # overlap of this stored tile with the region, in level coordinates
                sx0, sy0 = max(tx * tw, xa), max(ty * th, ya)
                sx1, sy1 = min((tx + 1) * tw, xb), min((ty + 1) * th, yb)
                self._copy_tile(
                    level,
                    page,
                    ty * across + tx,
                    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0],
                    (slice(sy0 - ty * th, sy1 - ty * th), slice(sx0 - tx * tw, sx1 - tx * tw)),
                )

    def stored_tile_index(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> int | None:
        """The stored JPEG tile that is exactly the region (same origin and size, inside the
        level), or None. Such a region is decoded straight into the caller's array."""
        page = self._pages[level]
        if page is None or not self._in_place(page):
            return None
        ds = self.level_downsamples[level]
        x0, y0 = round(location[0] / ds), round(location[1] / ds)
        lw, lh = self.level_dimensions[level]
        tw, th = page.tilewidth, page.tilelength
        one_tile = size == (tw, th) and x0 % tw == 0 and y0 % th == 0
        inside = min(x0, y0) >= 0 and x0 + tw <= lw and y0 + th <= lh
        if not (one_tile and inside):
            return None
        return (y0 // th) * -(-page.imagewidth // tw) + x0 // tw

    def jpeg_tiles(self, level: int) -> StoredJpeg | None:
        """`level` as square stored JPEG tiles that decode straight to RGB, or None."""
        page = self._pages[level]
        if page is None or not self._in_place(page) or page.tilewidth != page.tilelength:
            return None
        tables = page.jpegtables or b""
        return StoredJpeg(
            level=level,
            stored_px=page.tilewidth,
            across=-(-page.imagewidth // page.tilewidth),
            level_size=(page.imagewidth, page.imagelength),
            downsample=self.level_downsamples[level],
            slot_bytes=max(1, max(page.databytecounts)),
            tables=base64.b64encode(tables).decode("ascii"),
            rgb_as_is=_rgb_as_is(page),
        )

    def stored_bytes(self, level: int, index: int) -> bytes:
        """Stored tile `index` of `level` as written in the file (b'' for a tile never
        written: glass)."""
        page = self._pages[level]
        if page is None:
            raise ValueError(f"{self.path}: level {level} is not read directly")
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:
            return b""
        data = os.pread(self._fd, count, offset)
        if len(data) < count:
            raise UnreadableSlideError(
                f"{self.path}: stored tile {index} of level {level} is cut short (truncated?)"
            )
        return data

    @staticmethod
    def _in_place(page: tifffile.TiffPage) -> bool:
        """Whether stored tiles of `page` can be decoded straight into an RGB array: JPEG, 3
        samples, RGB or YCbCr, no extra samples."""
        return (
            page.compression == 7
            and page.samplesperpixel == 3
            and not page.extrasamples
            and page.photometric in (2, 6)
        )

    def _decode_into(
        self, level: int, page: tifffile.TiffPage, index: int, out: NDArray[np.uint8]
    ) -> None:
        """Decode stored JPEG tile `index` straight into `out`, a region or a cache array: no
        intermediate array, no copy."""
        data = self.stored_bytes(level, index)
        if not data:  # never written by the scanner: glass
            out[...] = 255
            return
        try:
            shape = (page.tilelength, page.tilewidth)
            decode_stored(data, page.jpegtables, _rgb_as_is(page), shape, out)
        except Exception as err:  # corrupt tile data, whatever exception the codec raises
            raise UnreadableSlideError(
                f"{self.path}: cannot decode stored tile {index} of level {level}: {err}"
            ) from err

    def _copy_tile(
        self,
        level: int,
        page: tifffile.TiffPage,
        index: int,
        dst: NDArray[np.uint8],
        src: tuple[slice, slice],
    ) -> None:
        """Copy part `src` of stored tile `index` into `dst`, decoding it unless cached.

        Cached arrays are only read under the lock, so an array evicted from the cache is no
        longer read by any thread and can take the next decode (see SPARE_BYTES)."""
        key = (level, index)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                dst[...] = hit[src]
                return
        shape = (page.tilelength, page.tilewidth, 3)
        if page.databytecounts[index] == 0:  # a tile the scanner never wrote: glass
            tile = np.full(shape, 255, np.uint8)
        elif self._in_place(page):
            with self._lock:
                spare = next((i for i, a in enumerate(self._spare) if a.shape == shape), None)
                tile = self._spare.pop(spare) if spare is not None else np.empty(shape, np.uint8)
            self._decode_into(level, page, index, tile)  # no lock: decoding runs in parallel
        else:
            tile = self._decode_other(level, page, index)
        with self._lock:
            dst[...] = tile[src]
            # decoded meanwhile by another thread, or larger than the whole cache
            if key in self._cache or tile.nbytes > self._cache.maxsize:
                self._keep_spare(tile)
                return
            self._cache[key] = tile

    def _keep_spare(self, tile: NDArray[np.uint8]) -> None:
        """Keep an array no longer cached for the next decode to write into (under the lock).
        Views (a 4-sample tile's RGB) cannot be decoded into and are let go."""
        fits = (len(self._spare) + 1) * tile.nbytes <= SPARE_BYTES
        if fits and tile.flags.c_contiguous and tile.flags.owndata:
            self._spare.append(tile)

    def _decode_other(self, level: int, page: tifffile.TiffPage, index: int) -> NDArray[np.uint8]:
        """A stored tile in any other codec tifffile decodes, as (h, w, 3)."""
        data = self.stored_bytes(level, index)
        try:
            decoded = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as err:  # corrupt tile data, whatever exception the codec raises
            raise UnreadableSlideError(
                f"{self.path}: cannot decode stored tile {index} of level {level}: {err}"
            ) from err
        if decoded is None:
            raise UnreadableSlideError(f"{self.path}: stored tile {index} decodes to nothing")
        return np.asarray(decoded).reshape(page.tilelength, page.tilewidth, -1)[..., :3]

    def drop_cache(self) -> None:
        """Forget decoded stored tiles (a benchmark's next pass must decode them again)."""
        with self._lock:
            self._cache.clear()  # each through popitem, so kept as a spare

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        os.close(self._fd)
        self._osr.close()


def _rgb_as_is(page: tifffile.TiffPage) -> bool:
    """RGB JPEG without a JFIF marker saying so (Aperio): see `decode_stored`."""
    return bool(page.photometric == 2 and not page.is_jfif)


def _decodable(page: tifffile.TiffPage) -> bool:
    return (
        page.compression in DIRECT_COMPRESSIONS
        and page.planarconfig == 1  # contiguous RGB(A)
        and page.samplesperpixel in (3, 4)
        and page.bitspersample == 8
        and page.photometric in (2, 6)  # RGB, or YCbCr (only inside JPEG)
        and (page.photometric == 2 or page.compression == 7)
    )


register_reader("tiff-direct", 10, TiffDirectReader.try_open)
