"""`slidemill bench`: throughput against the raw JPEG decode limit and the naive OpenSlide loop;
`slidemill bench-learning`: training settings on small cohorts of two generators."""

from slidemill.pipeline.bench._bench import (
    Pass,
    default_sample,
    fastest,
    raw_decode,
    run_bench,
    single_process,
)
from slidemill.pipeline.bench._gpu import run_bench_gpu
from slidemill.pipeline.bench._learning import (
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
from slidemill.pipeline.bench._many import ManyRun, link_slides, run_many_bench
from slidemill.pipeline.bench._run import pipeline_run
from slidemill.pipeline.bench._served import Served, served
from slidemill.pipeline.bench._slide import large_slide_geometry, write_large_slide
from slidemill.pipeline.bench._wheels import build_wheelhouse, missing, read_names

__all__ = [
    "DEFAULT_TILING",
    "GENERATORS",
    "STRATEGIES",
    "LearningSettings",
    "ManyRun",
    "Pass",
    "Served",
    "StudyRow",
    "build_wheelhouse",
    "cohorts",
    "default_sample",
    "encoder_folder",
    "fastest",
    "features_folder",
    "large_slide_geometry",
    "link_slides",
    "missing",
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
    "write_large_slide",
]
