"""`slidemill bench`: throughput against the raw JPEG decode limit and the naive OpenSlide loop."""

from slidemill.pipeline.bench._bench import default_sample, raw_decode, run_bench, single_process
from slidemill.pipeline.bench._run import pipeline_run
from slidemill.pipeline.bench._slide import large_slide_geometry, write_large_slide

__all__ = [
    "default_sample",
    "large_slide_geometry",
    "pipeline_run",
    "raw_decode",
    "run_bench",
    "single_process",
    "write_large_slide",
]
