"""Synthetic whole-slide images with known tissue and lesions, for the tests, the demo and the
benchmarks."""

from slidemill.pipeline.synth._degrade import (
    DEGRADATIONS,
    degrade,
    degraded_copy,
    write_array_slide,
    write_degraded_set,
)
from slidemill.pipeline.synth._synth import (
    BACKGROUND,
    LABEL_MARKER_RGB,
    MASK_MPP,
    BenchmarkSlide,
    Blob,
    Ellipse,
    SyntheticSlide,
    load_truth,
    plan_benchmark_slide,
    truth_beside,
    write_benchmark_set,
    write_slide,
)
from slidemill.pipeline.synth._texture import TextureSource, load_texture

__all__ = [
    "BACKGROUND",
    "DEGRADATIONS",
    "LABEL_MARKER_RGB",
    "MASK_MPP",
    "BenchmarkSlide",
    "Blob",
    "Ellipse",
    "SyntheticSlide",
    "TextureSource",
    "degrade",
    "degraded_copy",
    "load_texture",
    "load_truth",
    "plan_benchmark_slide",
    "truth_beside",
    "write_array_slide",
    "write_benchmark_set",
    "write_degraded_set",
    "write_slide",
]
