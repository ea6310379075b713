"""A SLURM job whose worker joins another cluster's scheduler (imported only with dask-jobqueue).

dask-jobqueue runs one kind of job per cluster object, and each cluster object starts its own
scheduler. For a second pool (GPU jobs) slidemill makes a second `SLURMCluster` with this job
class through dask-jobqueue's `job_cls` hook: the pool's jobs are written, submitted, scaled and
cancelled by dask-jobqueue as usual, but the worker command in each job script names the first
pool's scheduler, so one scheduler sees every worker and the graph's `GPU` resource requests
route inference to the GPU pool. The second cluster's own scheduler stays idle on loopback.
"""

from __future__ import annotations

from typing import Any

from dask_jobqueue.slurm import SLURMJob


class AttachedSLURMJob(SLURMJob):
    """`SLURMJob` whose worker connects to `attach_to` instead of its cluster's scheduler."""

    def __init__(
        self, scheduler: str | None = None, name: str | None = None, *, attach_to: str, **kw: Any
    ) -> None:
        super().__init__(scheduler=attach_to, name=name, **kw)
