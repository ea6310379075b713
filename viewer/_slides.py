"""Slide pixels for the viewer: a DeepZoom pyramid of each slide through openslide-python's
`DeepZoomGenerator`, as JPEG tiles read on demand (one region per tile, never a whole level),
and the tiles the model saw, cut at its resolution. Only pyramid levels are ever read: the
file's associated images (label, macro) have no way out of here."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from threading import Lock

import openslide
from cachetools import LRUCache
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from slidemill.pipeline.errors import SlideError
from slidemill.pipeline.slides import check_inside
from slidemill.viewer.errors import NotFoundError, UnreadableResultError

DZ_TILE = 254
"""DeepZoom tile edge; with a 1-px overlap tiles are 256 px, the size browsers cache best."""
DZ_OVERLAP = 1
JPEG_QUALITY = 80


class BytesCache:
    """An LRU of encoded tiles bounded by their total size in bytes (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self._cache: LRUCache[tuple[object, ...], bytes] = LRUCache(
            maxsize=max(1, max_bytes), getsizeof=len
        )
        self._lock = Lock()

    def get_or_make(self, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                return found
        data = make()  # outside the lock: tiles render in parallel
        with self._lock:
            if len(data) <= self._cache.maxsize:
                self._cache[key] = data
        return data


class SlideSources:
    """Open slides and their DeepZoom generators, most recently used kept; tiles cached.

    An OpenSlide handle is safe to read from several threads; one that falls out of the cache
    is closed by its finaliser once no request still holds it."""

    def __init__(
        self, max_open: int = 8, cache_bytes: int = 256 << 20, roots: Sequence[Path] = ()
    ) -> None:
        self._open: LRUCache[tuple[str, int], tuple[openslide.OpenSlide, DeepZoomGenerator]] = (
            LRUCache(maxsize=max_open)
        )
        self._lock = Lock()
        self._roots = tuple(roots)
        self.tiles = BytesCache(cache_bytes)

    def _get(self, path: Path) -> tuple[openslide.OpenSlide, DeepZoomGenerator]:
        if self._roots:  # opened at its real path, only inside the roots as they are now
            try:
                path = check_inside(path, self._roots).path
            except SlideError as err:  # not said why: the answer goes to a browser
                raise NotFoundError(f"{path.name}: the slide is not available") from err
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError as err:
            raise NotFoundError(f"{path.name}: the slide file is gone") from err
        with self._lock:
            found = self._open.get(key)
        if found is None:
            try:
                slide = openslide.OpenSlide(str(path))
            except openslide.OpenSlideError as err:
                raise UnreadableResultError(f"{path.name}: OpenSlide cannot open it") from err
            found = (slide, DeepZoomGenerator(slide, DZ_TILE, DZ_OVERLAP, limit_bounds=False))
            with self._lock:
                self._open[key] = found
        return found

    def dzi(self, path: Path) -> str:
        """The DeepZoom descriptor (XML) of the whole level-0 image, JPEG tiles."""
        return self._get(path)[1].get_dzi("jpeg")

    def tile(self, path: Path, level: int, col: int, row: int) -> bytes:
        """JPEG of DeepZoom tile (col, row) of `level`."""
        _, dz = self._get(path)
        if not 0 <= level < dz.level_count:
            raise NotFoundError(f"{path.name}: no DeepZoom level {level}")
        cols, rows = dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise NotFoundError(f"{path.name}: no tile {col},{row} at level {level}")

        def make() -> bytes:
            try:
                image = dz.get_tile(level, (col, row))
            except openslide.OpenSlideError as err:
                raise UnreadableResultError(f"{path.name}: cannot read tile: {err}") from err
            return _jpeg(image)

        return self.tiles.get_or_make(("dz", str(path), level, col, row), make)

    def region(self, path: Path, x: int, y: int, edge_level0: float, out_px: int) -> bytes:
        """JPEG of the level-0 square at (x, y) of side `edge_level0`, at `out_px` pixels: a
        tile as the model saw it (read from the level just finer than its resolution)."""
        slide, _ = self._get(path)

        def make() -> bytes:
            downsample = edge_level0 / out_px
            level = slide.get_best_level_for_downsample(max(downsample, 1.0))
            level_ds = slide.level_downsamples[level]
            size = max(1, round(edge_level0 / level_ds))
            try:
                image = slide.read_region((x, y), level, (size, size))
            except openslide.OpenSlideError as err:
                raise UnreadableResultError(f"{path.name}: cannot read a tile: {err}") from err
            return _jpeg(image.resize((out_px, out_px), Image.Resampling.LANCZOS))

        return self.tiles.get_or_make(("region", str(path), x, y, edge_level0, out_px), make)


def _jpeg(image: Image.Image) -> bytes:
    """Encode as JPEG over white (transparent areas outside the scan show white, as OpenSlide
    documents for its RGBA output)."""
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        image = white
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
