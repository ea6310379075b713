"""Kept JPEG decoded where the encoder runs (torchvision's `decode_jpeg`, nvJPEG on CUDA), here
on the CPU device: the same tiles as the host decode (imagecodecs), within JPEG's IDCT
tolerance, on the real Aperio slide (RGB without a marker, a mosaic of 240-px stored tiles
under a 256-px grid) and on a generated SVS whose grid lines up one to one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slidemill.pipeline.graph import (
    SlideJob,
    plan_slide,
    read_tile_pixels,
    read_tile_tensor,
    write_tiles,
)
from slidemill.pipeline.slides import decode_block_tensor, gather_block, open_slide
from slidemill.schemas import TilingSpec, TissueMethod
from slidemill.workers import full_stream

# Both decoders are libjpeg-turbo with its default (islow) IDCT here, and agree exactly on these
# slides; another build's or nvJPEG's IDCT may differ by a level or two (`make bench-gpu`
# measures nvJPEG's on the GPU).
IDCT_TOLERANCE = 2


def _job(path: Path, out: Path, mpp: float, tile_px: int) -> SlideJob:
    return SlideJob(
        slide_id=path.stem,
        path=str(path),
        out=str(out),
        tiling=TilingSpec(
            mpp=mpp, tile_px=tile_px, tissue_method=TissueMethod.NONE, min_tissue_fraction=0.0
        ),
        fallback_mpp=0.5,
        tiles_per_task=32,
        model_bundle="",
        model_sha256="",
        class_names=("a", "b"),
        feature_dim=1,
        batch_size=1,
    )


@pytest.mark.parametrize(
    ("slide", "mpp", "one_to_one"), [("sample", 0.499, False), ("synth-svs.svs", 0.5, True)]
)
def test_device_decode_gives_the_host_decodes_tiles(
    slide: str, mpp: float, one_to_one: bool, sample_slide: Path, slides_dir: Path, tmp_path: Path
) -> None:
    path = sample_slide if slide == "sample" else slides_dir / slide
    plan = plan_slide(_job(path, tmp_path, mpp, 256))
    assert plan.jpeg is not None and plan.jpeg.one_to_one is one_to_one
    for start, stop in plan.blocks:
        write_tiles(plan, start, stop)
    host = read_tile_pixels(plan.job.store, 0, plan.n_tiles, plan.job.path)
    device = read_tile_tensor(plan.job.store, 0, plan.n_tiles, plan.job.path, "cpu")
    assert device.dtype == torch.uint8 and device.shape == (plan.n_tiles, 3, 256, 256)
    diff = np.abs(device.permute(0, 2, 3, 1).numpy().astype(int) - host.astype(int))
    assert diff.max() <= IDCT_TOLERANCE, diff.max()
    # a range inside one block, cut from the middle of another
    part = read_tile_tensor(plan.job.store, 5, 40, plan.job.path, "cpu")
    assert torch.equal(part, device[5:40])


def test_glass_tiles_are_white_and_a_corrupt_one_names_the_slide(slides_dir: Path) -> None:
    from slidemill.pipeline.errors import UnreadableSlideError
    from slidemill.pipeline.slides import JpegTiles, TiffDirectReader

    reader = open_slide(slides_dir / "synth-svs.svs")
    assert isinstance(reader, TiffDirectReader)
    stored = reader.jpeg_tiles(0)
    assert stored is not None
    spec = JpegTiles(stored, stored.stored_px, 3, 3, True, 3)
    px = stored.stored_px
    coords = np.array([[0, 0], [px, 0], [2 * px, 0]], dtype=np.int64)
    blobs = {0: reader.stored_bytes(0, 0), 1: b"", 2: reader.stored_bytes(0, 2)}
    block = gather_block(spec, coords, lambda i: blobs[i], "s.svs")
    out = decode_block_tensor(spec, block, coords, "cpu", "s.svs")
    assert (out[1] == 255).all() and not (out[0] == 255).all()
    bad = {**blobs, 2: b"\x00\x00" + blobs[2][2:]}  # no start-of-image marker
    block = gather_block(spec, coords, lambda i: bad[i], "s.svs")
    with pytest.raises(UnreadableSlideError, match=r"s\.svs: cannot decode"):
        decode_block_tensor(spec, block, coords, "cpu", "s.svs")


def test_a_stream_made_whole_keeps_its_data_after_the_tables() -> None:
    tables = b"\xff\xd8" + b"\xff\xdb\x00\x03\x01" + b"\xff\xd9"
    data = b"\xff\xd8\xff\xda\x00\x02" + b"\x12\x34" + b"\xff\xd9"
    whole = full_stream(data, tables, rgb_as_is=True)
    assert whole.startswith(b"\xff\xd8\xff\xeeAdobe"[:4])
    assert whole.endswith(data[2:]) and b"\xff\xdb\x00\x03\x01" in whole
    assert whole.count(b"\xff\xd8") == 1 and whole.count(b"\xff\xd9") == 1
    assert full_stream(data, None, rgb_as_is=False) == data
    with pytest.raises(ValueError, match="start-of-image"):
        full_stream(b"\x00\x01", None, rgb_as_is=False)
