"""Kept JPEG tiles decoded where the encoder runs: a block's stored tiles in one batched
`decode_jpegs` call on a torch device (nvJPEG on CUDA), then cut into the block's tiles there,
by the same copies the host decode makes (`mosaic_copies`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.errors import UnreadableSlideError
from slidemill.pipeline.slides._jpegtiles import JpegTiles, PackedBlock, mosaic_copies

if TYPE_CHECKING:
    import torch


def decode_block_tensor(
    spec: JpegTiles,
    block: PackedBlock,
    coords: NDArray[np.int64] | None,
    device: torch.device | str,
    source: str,
) -> torch.Tensor:
    """One block's tiles decoded on `device`: (n, 3, tile_px, tile_px) uint8 RGB there, the
    tiles lying at level-0 `coords` (a mosaic needs them; one to one, rows are tiles). Glass
    (0-byte) stored tiles and parts outside the level are white, as the host decode gives them."""
    # imported here: the readers (and the viewer, which serves through them) never need PyTorch
    import torch

    from slidemill.workers import decode_jpegs, full_stream

    s = spec.stored
    used = int((block.index >= 0).sum())
    nbytes = block.nbytes[:used].tolist()
    tables, px = s.tables_bytes, s.stored_px
    try:
        streams = [
            full_stream(block.data[k, :n], tables, s.rgb_as_is) for k, n in enumerate(nbytes) if n
        ]
        decoded = decode_jpegs(streams, device)
    except (RuntimeError, ValueError) as err:  # the decoder's error on corrupt data
        raise UnreadableSlideError(f"{source}: cannot decode kept JPEG tiles: {err}") from err
    if any(d.shape != (3, px, px) for d in decoded):
        raise UnreadableSlideError(f"{source}: a kept JPEG tile is not {px}×{px} RGB")
    if len(decoded) == used and used:
        stored = torch.stack(decoded)
    else:
        stored = torch.full((used, 3, px, px), 255, dtype=torch.uint8, device=device)
        rows = [k for k, n in enumerate(nbytes) if n]
        if rows:
            stored[rows] = torch.stack(decoded)
    if spec.one_to_one:
        return stored
    if coords is None:
        raise ValueError("a mosaic's tiles need their coordinates")
    ops, outside = mosaic_copies(spec, block.index[:used], coords, source)
    t = spec.tile_px
    out = torch.empty((len(outside), 3, t, t), dtype=torch.uint8, device=device)
    if outside.any():
        out[torch.from_numpy(outside).to(device)] = 255
    for k, r, ty0, ty1, tx0, tx1, sy0, sy1, sx0, sx1 in ops.tolist():
        out[k, :, ty0:ty1, tx0:tx1] = stored[r, :, sy0:sy1, sx0:sx1]
    return out
