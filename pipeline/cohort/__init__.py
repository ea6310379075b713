"""Whole cohorts for learning: feature folders from slides, and tile sampling for encoder
pretraining."""

from slidemill.pipeline.cohort._features import encoder_bundle
from slidemill.pipeline.cohort._pretrain import (
    REPORT_FILE,
    WEIGHTS_FILE,
    pretrain,
    progress_bar,
    sample_tiles,
)

__all__ = [
    "REPORT_FILE",
    "WEIGHTS_FILE",
    "encoder_bundle",
    "pretrain",
    "progress_bar",
    "sample_tiles",
]
