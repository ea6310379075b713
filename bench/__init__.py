"""The benchmarks, a room of their own above the product's rooms, which never import it.

`slidemill bench`: tiling throughput against the raw JPEG decode limit and the naive OpenSlide
loop; `bench-gpu`: the same and encoding on a GPU (and the wheels a bare GPU machine needs);
`bench-learning`: training settings on small cohorts of the generators; `bench-service`: the
service under load; `bench-viewer`: what panning costs."""

from slidemill.bench._gpu import run_bench_gpu
from slidemill.bench._learning import (
    DEFAULT_TILING,
    GENERATORS,
    STRATEGIES,
    LearningSettings,
    StudyRow,
    cohorts,
    encoder_folder,
    features_folder,
    prepare_generator,
    run_learning_study,
    study_features,
    study_table,
)
from slidemill.bench._many import ManyRun, link_slides, run_many_bench
from slidemill.bench._run import pipeline_run
from slidemill.bench._served import Served, served
from slidemill.bench._service import LoadReport, load_benchmark
from slidemill.bench._slide import large_slide_geometry, write_large_slide
from slidemill.bench._throughput import (
    Pass,
    fastest,
    raw_decode,
    run_bench,
    single_process,
)
from slidemill.bench._viewer import Latencies, PanReport, pan_benchmark, viewer_benchmark
from slidemill.bench._wheels import build_wheelhouse, missing, read_names

__all__ = [
    "DEFAULT_TILING",
    "GENERATORS",
    "STRATEGIES",
    "Latencies",
    "LearningSettings",
    "LoadReport",
    "ManyRun",
    "PanReport",
    "Pass",
    "Served",
    "StudyRow",
    "build_wheelhouse",
    "cohorts",
    "encoder_folder",
    "fastest",
    "features_folder",
    "large_slide_geometry",
    "link_slides",
    "load_benchmark",
    "missing",
    "pan_benchmark",
    "pipeline_run",
    "prepare_generator",
    "raw_decode",
    "read_names",
    "run_bench",
    "run_bench_gpu",
    "run_learning_study",
    "run_many_bench",
    "served",
    "single_process",
    "study_features",
    "study_table",
    "viewer_benchmark",
    "write_large_slide",
]
