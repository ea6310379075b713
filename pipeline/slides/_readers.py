"""Slide readers: a small protocol, an OpenSlide backend, and a registry with priorities.

Readers only ever expose the slide pyramid. Associated images (label, macro) can carry patient
identifiers, so no reader offers them and nothing downstream can leak them by accident.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Protocol, runtime_checkable

import numpy as np
import openslide
import tifffile
from cachetools import LRUCache
from numpy.typing import NDArray
from PIL import Image

from slidemill.pipeline.errors import (
    MissingSlideError,
    SlideError,
    UnreadableSlideError,
    UnsupportedSlideError,
)
from slidemill.pipeline.slides._guard import check_inside, confirm
from slidemill.pipeline.slides._levels import choose_level

# Rows of a level read at once when building a thumbnail: bounds memory on slides without a
# pyramid, where the "thumbnail level" is level 0.
_THUMB_STRIP_PX = 2048


@runtime_checkable
class SlideReader(Protocol):
    """Read-only access to a slide's pyramid. Coordinates are always level-0 pixels."""

    path: Path

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 width and height."""
        ...

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level relative to level 0 (level 0 first)."""
        ...

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """Width and height of each level."""
        ...

    @property
    def mpp(self) -> float | None:
        """Level-0 µm per pixel, or None when the file does not record it."""
        ...

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        """RGB pixels (H × W × 3) of `size` at `level`, top-left at level-0 `location`; areas
        outside the scanned region are white."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Backend:
    name: str
    priority: int
    """Higher is tried first."""
    opener: Callable[[Path], SlideReader | None]
    """Returns None when the backend does not handle the file (the next one is tried)."""


_BACKENDS: list[_Backend] = []


def register_reader(name: str, priority: int, opener: Callable[[Path], SlideReader | None]) -> None:
    """Add a reader backend; `opener` returns None for files it does not handle."""
    _BACKENDS[:] = [b for b in _BACKENDS if b.name != name]
    _BACKENDS.append(_Backend(name, priority, opener))
    _BACKENDS.sort(key=lambda b: -b.priority)


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def tiff_damage(path: Path) -> str | None:
    """Why a file that announces itself as a TIFF (as SVS, NDPI, SCN and tiled TIFF do) cannot be
    whole, or None: not a TIFF, or an intact one that is simply no whole-slide image."""
    with path.open("rb") as fh:
        if fh.read(4) not in _TIFF_MAGIC:
            return None
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
                if ends and max(ends) > size:
                    return f"image data runs past the end of the file ({size} bytes)"
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, struct.error) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def open_slide(path: Path, backend: str | None = None) -> SlideReader:
    """Open `path` with the highest-priority backend that handles it (or only with `backend`).

    Raises MissingSlideError, UnreadableSlideError or UnsupportedSlideError, each naming the file.
    """
    if not path.exists():
        raise MissingSlideError(f"{path}: file not found")
    if not path.is_file():
        raise UnsupportedSlideError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UnreadableSlideError(f"{path}: file is empty (0 bytes)")
    for b in _BACKENDS:
        if backend is not None and b.name != backend:
            continue
        reader = b.opener(path)
        if reader is not None:
            return reader
    damage = tiff_damage(path)
    if damage is not None:
        raise UnreadableSlideError(f"{path}: truncated or corrupt TIFF: {damage}")
    raise UnsupportedSlideError(
        f"{path}: not a whole-slide image format that slidemill can read "
        f"(readers tried: {', '.join(b.name for b in _BACKENDS)})"
    )


def to_rgb(image: Image.Image) -> NDArray[np.uint8]:
    """Composite un-premultiplied RGBA onto white (OpenSlide marks unscanned areas transparent).

    PIL does the channel split in C, in one pass, which beats slicing a numpy RGBA array."""
    rgb = np.asarray(image.convert("RGB"))
    alpha = np.asarray(image.getchannel("A"))
    if int(alpha.min()) == 255:
        return rgb
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideReader:
    """The universal backend: every format OpenSlide opens (SVS, NDPI, MRXS, SCN, DICOM, ...)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as err:
            raise UnsupportedSlideError(f"{path}: not a format OpenSlide supports") from err
        except openslide.OpenSlideError as err:
            raise UnreadableSlideError(f"{path}: OpenSlide cannot open it: {err}") from err

    @classmethod
    def try_open(cls, path: Path) -> OpenSlideReader | None:
        try:
            fmt = openslide.OpenSlide.detect_format(str(path))
        except openslide.OpenSlideError as err:
            raise UnreadableSlideError(f"{path}: OpenSlide cannot read it: {err}") from err
        return cls(path) if fmt is not None else None

    @property
    def vendor(self) -> str | None:
        return self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR)

    @property
    def dimensions(self) -> tuple[int, int]:
        w, h = self._slide.dimensions
        return int(w), int(h)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def mpp(self) -> float | None:
        props = self._slide.properties
        values = []
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            try:
                v = float(props[key])
            except (KeyError, ValueError):
                continue
            if math.isfinite(v) and v > 0:
                values.append(v)
        return sum(values) / len(values) if values else None

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        try:
            region = self._slide.read_region(location, level, size)
        except openslide.OpenSlideError as err:
            raise UnreadableSlideError(
                f"{self.path}: cannot read pixels at {location} (level {level}): {err}"
            ) from err
        return to_rgb(region)

    def close(self) -> None:
        self._slide.close()


register_reader("openslide", 0, OpenSlideReader.try_open)


def read_thumbnail(reader: SlideReader, base_mpp: float, target_mpp: float) -> NDArray[np.uint8]:
    """The whole slide at (about) `target_mpp`, read from the pyramid in strips.

    The exact output resolution is level-0 size × base_mpp / target_mpp, rounded; callers get
    the true scale from the shape. Never uses the file's associated images.
    """
    width, height = reader.dimensions
    choice = choose_level(base_mpp, reader.level_downsamples, target_mpp, 1)
    level = choice.level
    lw, lh = reader.level_dimensions[level]
    out_w = max(1, round(width * base_mpp / target_mpp))
    out_h = max(1, round(height * base_mpp / target_mpp))
    scale_y = out_h / lh
    strips = []
    ds = choice.level_downsample
    for y in range(0, lh, _THUMB_STRIP_PX):
        rows = min(_THUMB_STRIP_PX, lh - y)
        strip = reader.read_region((0, round(y * ds)), level, (lw, rows))
        y0, y1 = round(y * scale_y), round((y + rows) * scale_y)
        if y1 > y0:
            img = Image.fromarray(strip).resize((out_w, y1 - y0), Image.Resampling.BOX)
            strips.append(np.asarray(img))
    return np.concatenate(strips, axis=0)


@dataclass(slots=True)
class _Handle:
    """An open reader and who is using it (mutable: guarded by the cache's lock)."""

    reader: SlideReader
    users: int = 0
    retired: bool = False
    """Out of the cache; closed when its last user lets go."""


def _retire(handle: _Handle) -> None:
    """Take a handle out of use (under the cache's lock): closed now, or by its last lease."""
    handle.retired = True
    if handle.users == 0:
        handle.reader.close()


class _Handles(LRUCache):
    """An LRU of handles whose least recently used, pushed out, is retired."""

    def popitem(self) -> tuple[tuple[str, int, int], _Handle]:
        key, handle = super().popitem()
        _retire(handle)
        return key, handle


class ReaderCache:
    """Open handles per process, most recently used kept (opening a slide parses its file's
    header and pyramid, which costs more than a read from it).

    Handles are leased: with several threads per worker, one thread may push a handle out of the
    cache (or evict it after an error) while another still reads from it, so a handle is closed
    only when its last lease ends."""

    def __init__(self, capacity: int = 8) -> None:
        self._handles = _Handles(maxsize=capacity)
        self._lock = Lock()

    @contextmanager
    def lease(self, path: Path, roots: Sequence[Path] = ()) -> Iterator[SlideReader]:
        """The slide's reader for the block. A `SlideError` raised in the block evicts the
        handle (an OpenSlide handle stays in an error state once it has failed).

        With `roots`, the file is opened only when its real path lies inside one of them, as it
        is now (`check_inside`), and read through that real path."""
        checked = check_inside(path, roots) if roots else None
        if checked is not None:
            path = checked.path
        handle = self._acquire(path)
        try:
            if checked is not None:
                confirm(checked, path)
            yield handle.reader
        except SlideError:
            self.evict(path)
            raise
        finally:
            with self._lock:
                handle.users -= 1
                if handle.retired and handle.users == 0:
                    handle.reader.close()

    def _acquire(self, path: Path) -> _Handle:
        try:
            st = path.stat()
        except FileNotFoundError as err:
            raise MissingSlideError(f"{path}: file not found") from err
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            handle: _Handle | None = self._handles.get(key)
            if handle is None:
                handle = _Handle(open_slide(path))
                self._handles[key] = handle
            handle.users += 1
            return handle

    def evict(self, path: Path) -> None:
        """Drop handles of `path`; each closes once no lease holds it."""
        with self._lock:
            for key in [k for k in self._handles if k[0] == str(path)]:
                _retire(self._handles.pop(key))


READERS = ReaderCache()
