"""The plan task: open a slide (inside the allowed roots, when given), find tissue, lay out the
tile grid and create the slide's Zarr store; or resume an interrupted plan."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from slidemill.pipeline.errors import MissingResolutionError, NoTissueError, SlideError
from slidemill.pipeline.graph._job import (
    PLAN_FILE,
    PLAN_JSON,
    Refusal,
    SlideJob,
    SlidePlan,
    refusal_for,
)
from slidemill.pipeline.graph._owned import check_slide_folder
from slidemill.pipeline.graph._resume import key_of, partial_is_valid
from slidemill.pipeline.graph._store import (
    create_store,
    final_dir,
    fresh_work_dir,
    write_array,
    write_block,
)
from slidemill.pipeline.graph._tiling import keepable_jpeg
from slidemill.pipeline.slides import (
    READERS,
    LevelChoice,
    ReaderCache,
    check_inside,
    choose_level,
    read_thumbnail,
)
from slidemill.pipeline.tissue import (
    TileGrid,
    blocks,
    plan_grid,
    tissue_mask,
)
from slidemill.schemas import (
    SlideResult,
    SlideStoreAttrs,
    TilingSpec,
)
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import RESULT_JSON, StoreArray
from slidemill.workers import (
    file_sha256,
)

log = logging.getLogger(__name__)


def _saved_plan(job: SlideJob) -> SlidePlan | None:
    """The plan of an interrupted run of this slide, if it is still valid for `job`."""
    try:
        saved = PLAN_JSON.validate_json((job.work / PLAN_FILE).read_bytes())
    except (OSError, ValidationError):
        return None
    if saved.job.tiles_per_task != job.tiles_per_task:  # chunks would not line up
        return None
    return saved if partial_is_valid(saved.job.key, job.key, job.force) else None


@dataclass(frozen=True, slots=True)
class TileLayout:
    """Where a slide's tiles lie: its resolution, tissue mask and tile grid."""

    dimensions: tuple[int, int]
    """Level-0 width and height."""
    base_mpp: float
    """Level-0 µm/px (the slide's own, or the fallback)."""
    mpp_source: Literal["slide", "fallback"]
    """Where `base_mpp` came from."""
    thumb: NDArray[np.uint8]
    """Thumbnail at the tissue resolution."""
    mask: NDArray[np.bool_]
    """Tissue mask over `thumb`."""
    choice: LevelChoice
    """Pyramid level tiles are read from."""
    stride_level0: float
    """Tile stride in level-0 pixels."""
    grid: TileGrid
    """Tiles kept (≥ the spec's tissue fraction)."""


def plan_layout(
    readers: ReaderCache,
    path: Path,
    spec: TilingSpec,
    fallback_mpp: float | None,
    roots: tuple[Path, ...] = (),
) -> TileLayout:
    """Open the slide (only inside `roots`, when given), find tissue and lay out the tile grid
    (no outputs written)."""
    source: Literal["slide", "fallback"]
    with readers.lease(path, roots) as reader:
        if reader.mpp is not None:
            base_mpp, source = reader.mpp, "slide"
        elif fallback_mpp is not None:
            base_mpp, source = fallback_mpp, "fallback"
        else:
            raise MissingResolutionError(
                f"{path}: the slide records no resolution (µm/px); give it with --mpp"
            )
        width, height = reader.dimensions
        downsamples = reader.level_downsamples
        thumb = read_thumbnail(reader, base_mpp, spec.tissue_mpp)
    thumb_mpp = base_mpp * width / thumb.shape[1]
    mask = tissue_mask(thumb, spec.tissue_method, thumb_mpp)
    choice = choose_level(base_mpp, downsamples, spec.mpp, spec.tile_px)
    stride_level0 = spec.stride_px * spec.mpp / base_mpp
    grid = plan_grid(
        mask,
        thumb.shape[1] / width,
        width,
        height,
        choice.tile_level0,
        stride_level0,
        spec.min_tissue_fraction,
    )
    if grid.n_tiles == 0:
        raise NoTissueError(
            f"{path}: no tissue found (no {spec.tile_px}px tile at {spec.mpp} µm/px has "
            f"≥{spec.min_tissue_fraction:.0%} tissue)"
        )
    return TileLayout((width, height), base_mpp, source, thumb, mask, choice, stride_level0, grid)


def plan_slide(job: SlideJob) -> SlidePlan:
    """Open the slide, find tissue, plan the tile grid and create the slide's Zarr store.

    After an interrupted run with the same inputs, returns the saved plan instead, so that the
    blocks already written are kept."""
    check_slide_folder(Path(job.out), job.slide_id)  # fail before any work, touching nothing
    saved = _saved_plan(job)
    if saved is not None:
        log.info("%s: resuming interrupted work", job.slide_id)
        return replace(saved, job=job, seconds=0.0)
    t0 = time.perf_counter()
    path = Path(job.path)
    if job.roots:  # read (and hashed) at its real path, checked inside the roots now
        path = check_inside(path, job.allowed).path
    layout = plan_layout(READERS, path, job.tiling, job.fallback_mpp, job.allowed)
    spec, grid, choice = job.tiling, layout.grid, layout.choice
    base_mpp, source, thumb, mask = layout.base_mpp, layout.mpp_source, layout.thumb, layout.mask
    width, height = layout.dimensions
    stride_level0 = layout.stride_level0
    provenance = job.provenance(slide_mpp=base_mpp, mpp_source=source, level=choice.level)
    attrs = SlideStoreAttrs(
        slide_id=job.slide_id,
        slide_dimensions=(width, height),
        tile_size_level0=choice.tile_level0,
        stride_level0=stride_level0,
        grid_shape=grid.shape,
        class_names=job.class_names,
        provenance=provenance,
    )
    jpeg = None
    if job.keep_jpeg is not False:
        with READERS.lease(path, job.allowed) as reader:
            jpeg = keepable_jpeg(reader, choice, spec.tile_px, grid.coords(), job.tiles_per_task)
    fresh_work_dir(Path(job.out), job.slide_id)
    create_store(
        job.store,
        attrs,
        n_tiles=grid.n_tiles,
        tile_px=spec.tile_px,
        tiles_per_block=job.tiles_per_task,
        feature_dim=job.feature_dim,
        n_classes=len(job.class_names),
        jpeg=jpeg,
    )
    write_block(job.store, StoreArray.COORDS, 0, grid.coords())
    write_block(
        job.store, StoreArray.GRID_INDEX, 0, np.stack([grid.rows, grid.cols], 1).astype(np.int32)
    )
    write_block(job.store, StoreArray.TISSUE_FRACTION, 0, grid.tissue_fraction)
    write_array(job.store, StoreArray.THUMBNAIL, thumb)
    write_array(job.store, StoreArray.TISSUE_MASK, mask)
    sha = file_sha256(check_inside(path, job.allowed).path if job.roots else path)  # as read
    plan = SlidePlan(
        job=job,
        n_tiles=grid.n_tiles,
        blocks=tuple(blocks(grid.n_tiles, job.tiles_per_task)),
        choice=choice,
        stride_level0=stride_level0,
        provenance=provenance,
        file_sha256=sha,
        seconds=time.perf_counter() - t0,
        jpeg=jpeg,
    )
    # written last: its presence means the store and arrays above are complete
    write_atomic(job.work / PLAN_FILE, PLAN_JSON.dump_json(plan))
    return plan


def plan_or_refuse(job: SlideJob) -> SlidePlan | Refusal:
    """The plan task: `plan_slide`, with a slide's own errors returned as a `Refusal`."""
    try:
        return plan_slide(job)
    except SlideError as err:
        return refusal_for(err)


def published_here(plan: SlidePlan) -> SlideResult | None:
    """The slide's result when this batch has already published it, else None.

    Dask recomputes a task whose result was lost with a worker (one retiring through
    --lifetime before it could hand its results over, say). By then the slide's folder may be
    published and its work folder gone: its tasks then find the work done, not a missing
    store. The work folder exists whenever the slide is not published, so this costs one stat."""
    job = plan.job
    if job.work.exists():
        return None
    try:
        text = (final_dir(Path(job.out), job.slide_id) / RESULT_JSON).read_text()
        result = SlideResult.model_validate_json(text)
    except (OSError, ValidationError):
        return None
    return result if key_of(result.provenance, result.path) == job.key else None
