"""`slidemill explain`: a run's slides explained on the workers that hold the model (Shapley
values of their regions, how faithful each explanation is, feature-level reasons), written
beside each slide store as `explain.zarr` and drawn as a layer by the viewer and the exports.
The arithmetic is `slidemill.workers.explain`'s; this is its Dask shell."""

from slidemill.pipeline.explain._run import ExplainFailure, ExplainReport, explain_run
from slidemill.pipeline.explain._task import ExplainedSlide, ExplainJob, explain_slide

__all__ = [
    "ExplainFailure",
    "ExplainJob",
    "ExplainReport",
    "ExplainedSlide",
    "explain_run",
    "explain_slide",
]
