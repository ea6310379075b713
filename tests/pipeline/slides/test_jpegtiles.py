"""Tiles kept as the slide's own JPEG streams: chosen only where the grid lines up with the stored
tiles, the file's bytes untouched, and decoded to the pixels the decode-at-tiling path gives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from slidemill.pipeline.errors import SlideError
from slidemill.pipeline.graph import (
    SlideJob,
    SlidePlan,
    plan_slide,
    read_all,
    read_tile_pixels,
    resume_key,
    write_tiles,
)
from slidemill.pipeline.slides import (
    JpegTiles,
    StoredJpeg,
    TiffDirectReader,
    choose_layout,
    decode_block,
    decode_rows,
    gather_block,
    open_slide,
    pack,
)
from slidemill.schemas import TilingSpec, TissueMethod
from tests.helpers import StoreView


def _job(path: Path, out: Path, mpp: float, tile_px: int, **kw: object) -> SlideJob:
    overlap = int(kw.pop("overlap", 0))  # type: ignore[call-overload]
    return SlideJob(
        slide_id=path.stem,
        path=str(path),
        out=str(out),
        tiling=TilingSpec(
            mpp=mpp,
            tile_px=tile_px,
            overlap_px=overlap,
            tissue_method=TissueMethod.NONE,
            min_tissue_fraction=0.0,
        ),
        fallback_mpp=0.5,
        tiles_per_task=32,
        model_bundle="",
        model_sha256="",
        class_names=("a", "b"),
        feature_dim=1,
        batch_size=1,
        **kw,  # type: ignore[arg-type]
    )


def _tile_all(job: SlideJob) -> tuple[SlidePlan, np.ndarray]:
    plan = plan_slide(job)
    for start, stop in plan.blocks:
        write_tiles(plan, start, stop)
    return plan, read_tile_pixels(job.store, 0, plan.n_tiles, job.path)


def _stored_side(path: Path) -> int:
    with tifffile.TiffFile(path) as tif:
        return int(tif.pages.first.tilewidth)


@pytest.mark.parametrize("name", ["synth-svs.svs", "synth-tiff.tiff"])
def test_aligned_grid_keeps_the_files_bytes_and_decodes_to_the_same_pixels(
    slides_dir: Path, tmp_path: Path, name: str
) -> None:
    path = slides_dir / name
    side = _stored_side(path)
    kept_plan, kept = _tile_all(_job(path, tmp_path / "kept", 0.5, side))
    assert kept_plan.jpeg is not None and kept_plan.jpeg.stored.level == 0
    assert kept_plan.jpeg.one_to_one
    root = StoreView(kept_plan.job.store)
    assert "tile_jpeg" in root and "tiles" not in root
    # each row is the stored tile at that grid position, byte for byte
    grid = read_all(kept_plan.job.store, "grid_index")
    data, nbytes = root["tile_jpeg"][...], root["tile_jpeg_rows"][:, 1]
    with tifffile.TiffFile(path) as tif, path.open("rb") as fh:
        page = tif.pages.first
        across = -(-page.imagewidth // side)
        for k in (0, len(grid) // 2, len(grid) - 1):
            index = int(grid[k, 0]) * across + int(grid[k, 1])
            fh.seek(page.dataoffsets[index])
            assert data[k, : nbytes[k]].tobytes() == fh.read(page.databytecounts[index])
    # the same slide decoded at tiling time: the very same pixels
    rgb_plan, rgb = _tile_all(_job(path, tmp_path / "rgb", 0.5, side, keep_jpeg=False))
    assert rgb_plan.jpeg is None
    assert "tiles" in StoreView(rgb_plan.job.store)
    assert kept.shape == rgb.shape and len(kept) > 10
    np.testing.assert_array_equal(kept, rgb)
    # and the store is smaller than RGB would be
    assert data.nbytes / (len(kept) * side * side * 3) < 0.5


@pytest.mark.parametrize(
    ("name", "delta", "overlap"),
    [
        ("synth-svs.svs", -16, 0),  # tiles straddle stored tiles
        ("synth-svs.svs", 0, 16),  # overlapping tiles
        ("synth-svs.svs", 40, 0),  # another size, straddling
        ("synth-tiff.tiff", 256, 0),  # a tile spans four stored tiles
    ],
)
def test_other_grids_keep_a_mosaic_of_stored_tiles_with_the_same_pixels(
    slides_dir: Path, tmp_path: Path, name: str, delta: int, overlap: int
) -> None:
    path = slides_dir / name
    side = _stored_side(path) + delta
    plan, kept = _tile_all(_job(path, tmp_path / "kept", 0.5, side, overlap=overlap))
    assert plan.jpeg is not None and not plan.jpeg.one_to_one
    root = StoreView(plan.job.store)
    assert "tiles" not in root
    # each block keeps each stored tile it needs once: fewer rows than tile-sized reads would be
    index = root["tile_jpeg_rows"][:, 0].reshape(len(plan.blocks), -1)
    for row in index:
        used = row[row >= 0]
        assert (np.diff(used) > 0).all()
    rgb_plan, rgb = _tile_all(
        _job(path, tmp_path / "rgb", 0.5, side, overlap=overlap, keep_jpeg=False)
    )
    assert rgb_plan.jpeg is None and kept.shape == rgb.shape and len(kept) > 10
    np.testing.assert_array_equal(kept, rgb)
    # any range of tiles reads back the same, across block edges too
    middle = slice(plan.blocks[0][1] - 3, plan.blocks[0][1] + 5)
    again = read_tile_pixels(plan.job.store, middle.start, middle.stop, plan.job.path)
    np.testing.assert_array_equal(again, rgb[middle])


def test_resized_tiles_store_rgb(slides_dir: Path, tmp_path: Path) -> None:
    path = slides_dir / "synth-svs.svs"
    plan = plan_slide(_job(path, tmp_path, 0.6, _stored_side(path)))
    assert plan.jpeg is None
    assert "tiles" in StoreView(plan.job.store)


def test_a_lower_level_that_lines_up_is_kept(slides_dir: Path, tmp_path: Path) -> None:
    path = slides_dir / "synth-tiff.tiff"  # levels at 1, 2 and 8×: 1 µm/px is level 1 as stored
    plan, kept = _tile_all(_job(path, tmp_path / "kept", 1.0, _stored_side(path)))
    assert plan.jpeg is not None and plan.jpeg.stored.level == 1
    _, rgb = _tile_all(_job(path, tmp_path / "rgb", 1.0, _stored_side(path), keep_jpeg=False))
    np.testing.assert_array_equal(kept, rgb)


def test_aperio_rgb_jpeg_kept_decodes_like_openslide(sample_slide: Path, tmp_path: Path) -> None:
    """The real slide stores RGB (not YCbCr) JPEG without a marker saying so; kept tiles must be
    decoded as such."""
    side = _stored_side(sample_slide)
    plan, kept = _tile_all(_job(sample_slide, tmp_path, 0.499, side))
    assert plan.jpeg is not None and plan.jpeg.stored.rgb_as_is
    reference = open_slide(sample_slide, backend="openslide")
    grid = read_all(plan.job.store, "grid_index")
    for k in (0, len(grid) // 2, len(grid) - 1):
        y, x = (int(v) * side for v in grid[k])
        expected = reference.read_region((x, y), 0, (side, side))
        assert np.abs(kept[k].astype(int) - expected.astype(int)).mean() <= 1.0


def test_glass_and_corrupt_kept_tiles(slides_dir: Path) -> None:
    reader = open_slide(slides_dir / "synth-svs.svs")
    assert isinstance(reader, TiffDirectReader)
    spec = reader.jpeg_tiles(0)
    assert spec is not None
    blob = reader.stored_bytes(0, 3)
    data, nbytes = pack([b"", blob], spec.slot_bytes)
    tiles = np.empty((2, spec.stored_px, spec.stored_px, 3), np.uint8)
    decode_rows(spec, data, nbytes, tiles, "slide-x.svs")
    assert (tiles[0] == 255).all()  # a tile the scanner never wrote is glass
    expected = np.empty_like(tiles[1])
    reader.read_region_into((3 * spec.stored_px, 0), 0, expected)
    np.testing.assert_array_equal(tiles[1], expected)
    data[1, :4] = 0  # no start-of-image marker
    with pytest.raises(SlideError, match=r"slide-x\.svs: cannot decode kept JPEG tile 1"):
        decode_rows(spec, data, nbytes, tiles, "slide-x.svs")
    with pytest.raises(ValueError, match="exceeds"):
        pack([blob], len(blob) - 1)


def test_a_grid_that_stops_lining_up_fails_the_slide_by_name(
    slides_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = slides_dir / "synth-svs.svs"
    plan = plan_slide(_job(path, tmp_path, 0.5, _stored_side(path)))
    assert plan.jpeg is not None
    real = TiffDirectReader.jpeg_tiles

    def moved(reader: TiffDirectReader, level: int) -> StoredJpeg:  # another tile size now
        stored = real(reader, level)
        assert stored is not None
        return replace(stored, stored_px=128)

    monkeypatch.setattr(TiffDirectReader, "jpeg_tiles", moved)
    with pytest.raises(SlideError, match=r"synth-svs\.svs: the stored JPEG tiles no longer"):
        write_tiles(plan, *plan.blocks[0])


@pytest.mark.parametrize("delta", [0, 16])  # one to one, and a mosaic
def test_an_interrupted_kept_jpeg_slide_resumes_with_its_plan(
    slides_dir: Path, tmp_path: Path, delta: int
) -> None:
    path = slides_dir / "synth-svs.svs"
    side = _stored_side(path) + delta
    job = _job(path, tmp_path, 0.5, side)
    job = replace(job, key=resume_key(path, job.tiling, "", job.fallback_mpp))
    plan = plan_slide(job)
    assert plan.jpeg is not None and plan.jpeg.one_to_one == (delta == 0)
    assert len(plan.blocks) > 1
    write_tiles(plan, *plan.blocks[0])
    again = plan_slide(job)  # the saved plan, its store and the block written are kept
    assert again.jpeg == plan.jpeg and again.blocks == plan.blocks
    first = read_tile_pixels(job.store, *plan.blocks[0], job.path)
    for start, stop in again.blocks[1:]:
        write_tiles(again, start, stop)
    _, whole = _tile_all(_job(path, tmp_path / "clean", 0.5, side))
    np.testing.assert_array_equal(first, whole[: len(first)])
    np.testing.assert_array_equal(read_tile_pixels(job.store, 0, plan.n_tiles, job.path), whole)


def _level(
    width: int, height: int, px: int
) -> tuple[StoredJpeg, list[bytes | bytearray], np.ndarray]:
    """A level of `px` stored JPEG tiles over a smooth image, and the image as decoded."""
    across, down = -(-width // px), -(-height // px)
    yy, xx = np.mgrid[0 : down * px, 0 : across * px]
    image = np.stack([xx * 2 % 256, yy * 3 % 256, (xx + yy) % 256], -1).astype(np.uint8)
    blobs: list[bytes | bytearray] = []
    decoded = np.empty_like(image)
    for ty in range(down):
        for tx in range(across):
            part = (slice(ty * px, (ty + 1) * px), slice(tx * px, (tx + 1) * px))
            blobs.append(imagecodecs.jpeg_encode(np.ascontiguousarray(image[part]), level=95))
            decoded[part] = imagecodecs.jpeg_decode(blobs[-1])
    stored = StoredJpeg(
        level=0,
        stored_px=px,
        across=across,
        level_size=(width, height),
        downsample=1.0,
        slot_bytes=max(len(b) for b in blobs),
        tables="",
        rgb_as_is=False,
    )
    return stored, blobs, decoded[:height, :width]


def test_a_mosaic_assembles_tiles_and_leaves_the_outside_white() -> None:
    stored, blobs, image = _level(100, 70, 32)
    # tiles of 48 px: inside, straddling four stored tiles, past the right and bottom edges
    coords = np.array([[0, 0], [20, 10], [40, 30], [80, 0], [90, 50]], dtype=np.int64)
    spec = choose_layout(stored, 48, coords, block_tiles=3)
    assert spec is not None and not spec.one_to_one
    out = np.empty((len(coords), 48, 48, 3), np.uint8)
    for start in (0, 3):
        part = coords[start : start + 3]
        block = gather_block(spec, part, lambda i: bytes(blobs[i]), "level.tiff")
        assert len(block.index) == spec.block_rows  # every block has its rows, padded
        decode_block(spec, block, part, out[start : start + 3], "level.tiff")
    white = np.full((70 + 48, 100 + 48, 3), 255, np.uint8)
    white[:70, :100] = image
    for k, (x, y) in enumerate(coords.tolist()):
        np.testing.assert_array_equal(out[k], white[y : y + 48, x : x + 48])
    assert (out[3, :, 20:] == 255).all() and (out[4, 20:, :] == 255).all()


def test_a_mosaic_that_would_decode_far_more_than_it_keeps_is_not_chosen() -> None:
    stored, _, _ = _level(4096, 4096, 1024)
    sparse = np.array([[0, 0], [2048, 2048]], dtype=np.int64)  # two 256-px tiles, far apart
    assert choose_layout(stored, 256, sparse, block_tiles=256) is None
    dense = np.array([[x, y] for y in range(0, 1024, 256) for x in range(0, 1024, 256)])
    spec = choose_layout(stored, 256, dense + 128, block_tiles=256)  # 16 tiles over 4 stored
    assert spec is not None and spec.block_rows == 4
    assert choose_layout(stored, 1024, np.array([[0, 0]]), 256) == JpegTiles(
        stored, 1024, 256, 256, one_to_one=True, n_tiles=1
    )


def test_the_sample_slide_at_256_px_keeps_a_mosaic_with_the_direct_readers_pixels(
    sample_slide: Path, tmp_path: Path
) -> None:
    """The bench's case: 256-px tiles over the Aperio slide's 240-px stored tiles."""
    plan, kept = _tile_all(_job(sample_slide, tmp_path / "kept", 0.499, 256))
    assert plan.jpeg is not None and not plan.jpeg.one_to_one
    _, rgb = _tile_all(_job(sample_slide, tmp_path / "rgb", 0.499, 256, keep_jpeg=False))
    np.testing.assert_array_equal(kept, rgb)
