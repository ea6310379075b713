"""The Dask graph of a batch: plan, tile, encode, MIL and reduce tasks, the Zarr store they share,
resume decisions, heatmap rasterisation, and the output folder's lock."""

from slidemill.pipeline.graph._batch import (
    BatchHooks,
    BatchReport,
    keep_jpeg,
    resume_key,
    run_batch,
    tiling_for,
)
from slidemill.pipeline.graph._heatmap import rasterise
from slidemill.pipeline.graph._lock import LockHolder, hold_output, is_stale
from slidemill.pipeline.graph._resume import Action, ResumeKey, decide, key_of, partial_is_valid
from slidemill.pipeline.graph._store import (
    fresh_work_dir,
    jpeg_layout,
    publish,
    read_all,
    read_attrs,
    read_block,
    read_tile_pixels,
    read_tile_tensor,
    work_dir,
    write_array,
    write_block,
)
from slidemill.pipeline.graph._tasks import (
    SlideJob,
    SlidePlan,
    decide_label,
    plan_layout,
    plan_slide,
    write_tiles,
)
from slidemill.pipeline.graph._tiling import read_tiles, runs
from slidemill.pipeline.graph._watch import WorkerWatch

__all__ = [
    "Action",
    "BatchHooks",
    "BatchReport",
    "LockHolder",
    "ResumeKey",
    "SlideJob",
    "SlidePlan",
    "WorkerWatch",
    "decide",
    "decide_label",
    "fresh_work_dir",
    "hold_output",
    "is_stale",
    "jpeg_layout",
    "keep_jpeg",
    "key_of",
    "partial_is_valid",
    "plan_layout",
    "plan_slide",
    "publish",
    "rasterise",
    "read_all",
    "read_attrs",
    "read_block",
    "read_tile_pixels",
    "read_tile_tensor",
    "read_tiles",
    "resume_key",
    "run_batch",
    "runs",
    "tiling_for",
    "work_dir",
    "write_array",
    "write_block",
    "write_tiles",
]
