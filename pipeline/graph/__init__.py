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
from slidemill.pipeline.graph._heatmap import rasterise, render_png
from slidemill.pipeline.graph._job import SlideJob, SlidePlan, write_result
from slidemill.pipeline.graph._lock import LockHolder, hold_output, is_stale, process_started
from slidemill.pipeline.graph._owned import (
    check_slide_folder,
    claim_output,
    is_own_slide_folder,
    output_refusal,
)
from slidemill.pipeline.graph._plan import plan_layout, plan_slide, published_here
from slidemill.pipeline.graph._progress import batch_progress
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
    decide_label,
    encode_block,
    mil_slide,
    png_thumbnail,
    reduce_slide,
    tile_block,
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
    "batch_progress",
    "check_slide_folder",
    "claim_output",
    "decide",
    "decide_label",
    "encode_block",
    "fresh_work_dir",
    "hold_output",
    "is_own_slide_folder",
    "is_stale",
    "jpeg_layout",
    "keep_jpeg",
    "key_of",
    "mil_slide",
    "output_refusal",
    "partial_is_valid",
    "plan_layout",
    "plan_slide",
    "png_thumbnail",
    "process_started",
    "publish",
    "published_here",
    "rasterise",
    "read_all",
    "read_attrs",
    "read_block",
    "read_tile_pixels",
    "read_tile_tensor",
    "read_tiles",
    "reduce_slide",
    "render_png",
    "resume_key",
    "run_batch",
    "runs",
    "tile_block",
    "tiling_for",
    "work_dir",
    "write_array",
    "write_block",
    "write_result",
    "write_tiles",
]
