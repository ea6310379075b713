"""The benchmarks, a room of their own above the product's rooms, which never import it.

`slidemill bench`: tiling throughput against the raw JPEG decode limit and the naive OpenSlide
loop; `bench-gpu`: the same and encoding on a GPU (and the wheels a bare GPU machine needs);
`bench-encoders`: the encoder presets in float32 and int8 on this machine's CPU;
`bench-learning`: training settings on small cohorts of the generators; `bench-explain`: how
faithful the demo models' explanations are and what explaining costs; `bench-families`:
whether settings chosen on some lesion families hold on another (leave one family out);
`bench-federated`: sites whose stain and scanner differ, alone, pooled and federated on Flower;
`bench-service`: the service under load; `bench-viewer`: what panning costs."""

from slidemill.bench._encoders import (
    EncoderRow,
    default_order,
    encoder_table,
    measure_preset,
    run_bench_encoders,
    tissue_tiles,
)
from slidemill.bench._explain import (
    ExplainBench,
    HeadFaithfulness,
    ScalingPoint,
    explain_tables,
    find_demo,
    run_bench_explain,
)
from slidemill.bench._families import (
    FAMILY_STRATEGIES,
    Candidate,
    Choice,
    FamilySettings,
    HeldOutRow,
    Score,
    choose_setting,
    family_table,
    leave_one_family_out,
    run_family_study,
    split_train_test,
)
from slidemill.bench._federated import (
    BenchRow,
    BenchSite,
    FederatedBenchSettings,
    FederatedRun,
    SiteSplit,
    federated_table,
    run_federated_bench,
    split_site,
)
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
    "FAMILY_STRATEGIES",
    "GENERATORS",
    "STRATEGIES",
    "BenchRow",
    "BenchSite",
    "Candidate",
    "Choice",
    "EncoderRow",
    "ExplainBench",
    "FamilySettings",
    "FederatedBenchSettings",
    "FederatedRun",
    "HeadFaithfulness",
    "HeldOutRow",
    "Latencies",
    "LearningSettings",
    "LoadReport",
    "ManyRun",
    "PanReport",
    "Pass",
    "ScalingPoint",
    "Score",
    "Served",
    "SiteSplit",
    "StudyRow",
    "build_wheelhouse",
    "choose_setting",
    "cohorts",
    "default_order",
    "encoder_folder",
    "encoder_table",
    "explain_tables",
    "family_table",
    "fastest",
    "features_folder",
    "federated_table",
    "find_demo",
    "large_slide_geometry",
    "leave_one_family_out",
    "link_slides",
    "load_benchmark",
    "measure_preset",
    "missing",
    "pan_benchmark",
    "pipeline_run",
    "prepare_generator",
    "raw_decode",
    "read_names",
    "run_bench",
    "run_bench_encoders",
    "run_bench_explain",
    "run_bench_gpu",
    "run_family_study",
    "run_federated_bench",
    "run_learning_study",
    "run_many_bench",
    "served",
    "single_process",
    "split_site",
    "split_train_test",
    "study_features",
    "study_table",
    "tissue_tiles",
    "viewer_benchmark",
    "write_large_slide",
]
