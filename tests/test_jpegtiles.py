"""Tiles kept as the slide's own JPEG streams: chosen only where the grid lines up with the stored
tiles, the file's bytes untouched, and decoded to the pixels the decode-at-tiling path gives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from pipeline._batch import resume_key
from pipeline._jpegtiles import decode, pack
from pipeline._readers import open_slide
from pipeline._store import read_all, read_tile_pixels
from pipeline._tasks import SlideJob, SlidePlan, plan_slide, write_tiles
from pipeline._tiffdirect import TiffDirectReader
from pipeline.errors import SlideError
from schemas import TilingSpec, TissueMethod


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
    assert kept_plan.jpeg is not None and kept_plan.jpeg.level == 0
    root = zarr.open_group(str(kept_plan.job.store), mode="r")
    assert "tile_jpeg" in root and "tiles" not in root
    # each row is the stored tile at that grid position, byte for byte
    grid = read_all(kept_plan.job.store, "grid_index")
    data, nbytes = root["tile_jpeg"][...], root["tile_jpeg_nbytes"][...]
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
    assert "tiles" in zarr.open_group(str(rgb_plan.job.store), mode="r")
    assert kept.shape == rgb.shape and len(kept) > 10
    np.testing.assert_array_equal(kept, rgb)
    # and the store is smaller than RGB would be
    assert data.nbytes / (len(kept) * side * side * 3) < 0.5


@pytest.mark.parametrize(
    ("name", "mpp", "delta", "overlap"),
    [
        ("synth-svs.svs", 0.5, -16, 0),  # tiles straddle stored tiles
        ("synth-svs.svs", 0.5, 0, 16),  # overlapping tiles
        ("synth-svs.svs", 0.6, 0, 0),  # resized
        ("synth-tiff.tiff", 0.5, 256, 0),  # a tile spans four stored tiles
    ],
)
def test_grids_that_do_not_line_up_store_rgb(
    slides_dir: Path, tmp_path: Path, name: str, mpp: float, delta: int, overlap: int
) -> None:
    path = slides_dir / name
    plan = plan_slide(_job(path, tmp_path, mpp, _stored_side(path) + delta, overlap=overlap))
    assert plan.jpeg is None
    assert "tiles" in zarr.open_group(str(plan.job.store), mode="r")


def test_a_lower_level_that_lines_up_is_kept(slides_dir: Path, tmp_path: Path) -> None:
    path = slides_dir / "synth-tiff.tiff"  # levels at 1, 2 and 8×: 1 µm/px is level 1 as stored
    plan, kept = _tile_all(_job(path, tmp_path / "kept", 1.0, _stored_side(path)))
    assert plan.jpeg is not None and plan.jpeg.level == 1
    _, rgb = _tile_all(_job(path, tmp_path / "rgb", 1.0, _stored_side(path), keep_jpeg=False))
    np.testing.assert_array_equal(kept, rgb)


def test_aperio_rgb_jpeg_kept_decodes_like_openslide(sample_slide: Path, tmp_path: Path) -> None:
    """The real slide stores RGB (not YCbCr) JPEG without a marker saying so; kept tiles must be
    decoded as such."""
    side = _stored_side(sample_slide)
    plan, kept = _tile_all(_job(sample_slide, tmp_path, 0.499, side))
    assert plan.jpeg is not None and plan.jpeg.rgb_as_is
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
    tiles = decode(spec, data, nbytes, "slide-x.svs")
    assert (tiles[0] == 255).all()  # a tile the scanner never wrote is glass
    expected = np.empty_like(tiles[1])
    reader.read_region_into((3 * spec.tile_px, 0), 0, expected)
    np.testing.assert_array_equal(tiles[1], expected)
    data[1, :4] = 0  # no start-of-image marker
    with pytest.raises(SlideError, match=r"slide-x\.svs: cannot decode kept JPEG tile 1"):
        decode(spec, data, nbytes, "slide-x.svs")
    with pytest.raises(ValueError, match="exceeds"):
        pack([blob], len(blob) - 1)


def test_a_grid_that_stops_lining_up_fails_the_slide_by_name(
    slides_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = slides_dir / "synth-svs.svs"
    plan = plan_slide(_job(path, tmp_path, 0.5, _stored_side(path)))
    assert plan.jpeg is not None
    monkeypatch.setattr(TiffDirectReader, "stored_tile_index", lambda *a: None)
    with pytest.raises(SlideError, match=r"synth-svs\.svs: the stored JPEG tiles no longer"):
        write_tiles(plan, *plan.blocks[0])


def test_an_interrupted_kept_jpeg_slide_resumes_with_its_plan(
    slides_dir: Path, tmp_path: Path
) -> None:
    path = slides_dir / "synth-svs.svs"
    job = _job(path, tmp_path, 0.5, _stored_side(path))
    job = replace(job, key=resume_key(path, job.tiling, "", job.fallback_mpp))
    plan = plan_slide(job)
    assert plan.jpeg is not None and len(plan.blocks) > 1
    write_tiles(plan, *plan.blocks[0])
    again = plan_slide(job)  # the saved plan, its store and the block written are kept
    assert again.jpeg == plan.jpeg and again.blocks == plan.blocks
    first = read_tile_pixels(job.store, *plan.blocks[0], job.path)
    for start, stop in again.blocks[1:]:
        write_tiles(again, start, stop)
    _, whole = _tile_all(_job(path, tmp_path / "clean", 0.5, _stored_side(path)))
    np.testing.assert_array_equal(first, whole[: len(first)])
    np.testing.assert_array_equal(read_tile_pixels(job.store, 0, plan.n_tiles, job.path), whole)
