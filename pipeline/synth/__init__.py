"""Synthetic whole-slide images with known tissue and lesions, for the tests, the demo and the
benchmarks.

Inside: `_slide` (what a slide is, and its rendering block by block), `_shapes` (tissue and
planted regions), `_noise` (hashing and noise), `_cells` (nuclei and glands), `_shade` (the
colours), `_texture` (a real slide's texture), `_tiff` (writing the pyramid), `_plan`, `_truth`
and `_benchset` (the labelled benchmark set), `_degrade` (degraded copies for slide QC); `_families`
and `_scene` (lesion families: lesions that differ from normal tissue in different ways, among
confounders, each slide with its own stain and scanner, shifted per site by `SiteShift`).
"""

from slidemill.pipeline.synth._benchset import BenchmarkSlide, write_benchmark_set
from slidemill.pipeline.synth._degrade import (
    DEGRADATIONS,
    degrade,
    degraded_copy,
    write_array_slide,
    write_degraded_set,
)
from slidemill.pipeline.synth._families import LESION_SHARE, plan_family_slide, write_scanned
from slidemill.pipeline.synth._plan import plan_benchmark_slide
from slidemill.pipeline.synth._scene import FAMILIES, VARIANTS, Band, Scene, SiteShift, site_shift
from slidemill.pipeline.synth._shade import BACKGROUND
from slidemill.pipeline.synth._shapes import Blob, Ellipse
from slidemill.pipeline.synth._slide import MASK_MPP, SyntheticSlide
from slidemill.pipeline.synth._texture import TextureSource, load_texture
from slidemill.pipeline.synth._tiff import LABEL_MARKER_RGB, write_slide
from slidemill.pipeline.synth._truth import load_truth, truth_beside

__all__ = [
    "BACKGROUND",
    "DEGRADATIONS",
    "FAMILIES",
    "LABEL_MARKER_RGB",
    "LESION_SHARE",
    "MASK_MPP",
    "VARIANTS",
    "Band",
    "BenchmarkSlide",
    "Blob",
    "Ellipse",
    "Scene",
    "SiteShift",
    "SyntheticSlide",
    "TextureSource",
    "degrade",
    "degraded_copy",
    "load_texture",
    "load_truth",
    "plan_benchmark_slide",
    "plan_family_slide",
    "site_shift",
    "truth_beside",
    "write_array_slide",
    "write_benchmark_set",
    "write_degraded_set",
    "write_scanned",
    "write_slide",
]
