"""Whole-slide files: discovery and ids, the reader registry (OpenSlide and the direct TIFF
path), pyramid level choice, and the slide's own stored JPEG tiles."""

from slidemill.pipeline.slides._devicejpeg import decode_block_tensor
from slidemill.pipeline.slides._discover import SlideEntry, assign_ids, expand
from slidemill.pipeline.slides._guard import CheckedFile, check_inside, confirm, inside
from slidemill.pipeline.slides._jpegtiles import (
    JpegTiles,
    PackedBlock,
    StoredJpeg,
    choose_layout,
    decode_block,
    decode_rows,
    decode_stored,
    gather_block,
    mosaic_copies,
    moved_error,
    pack,
)
from slidemill.pipeline.slides._levels import MPP_TOLERANCE, LevelChoice, choose_level
from slidemill.pipeline.slides._readers import (
    READERS,
    OpenSlideReader,
    ReaderCache,
    SlideReader,
    open_slide,
    read_thumbnail,
    register_reader,
    to_rgb,
)
from slidemill.pipeline.slides._tiffdirect import TiffDirectReader

__all__ = [
    "MPP_TOLERANCE",
    "READERS",
    "CheckedFile",
    "JpegTiles",
    "LevelChoice",
    "OpenSlideReader",
    "PackedBlock",
    "ReaderCache",
    "SlideEntry",
    "SlideReader",
    "StoredJpeg",
    "TiffDirectReader",
    "assign_ids",
    "check_inside",
    "choose_layout",
    "choose_level",
    "confirm",
    "decode_block",
    "decode_block_tensor",
    "decode_rows",
    "decode_stored",
    "expand",
    "gather_block",
    "inside",
    "mosaic_copies",
    "moved_error",
    "open_slide",
    "pack",
    "read_thumbnail",
    "register_reader",
    "to_rgb",
]
