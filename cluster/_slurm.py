"""SLURM through dask-jobqueue: a CPU pool that owns the scheduler and adapts, and an optional
GPU pool of fixed size whose workers declare `GPU=1`.

The job scripts are dask-jobqueue's own (`SLURMCluster.job_script()`); slidemill only chooses the
arguments. `slurm_pools` creates the cluster objects without submitting anything (creating one
starts its scheduler in this process), so the scripts can be inspected before a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from distributed import Client

from slidemill.cluster._backend import (
    GPU_RESOURCE,
    Backend,
    nanny_environ_export,
    require_extra,
)
from slidemill.schemas import SlurmClusterConfig, SlurmCpuPool, SlurmGpuPool

DASK_WORKER = "distributed.cli.dask_worker"
CUDA_WORKER = "dask_cuda.cli"
"""dask-cuda's worker command: starts one worker per visible GPU, each pinned to its device.
Used for GPU jobs with more than one GPU, where `dask worker --nworkers N` would leave every
worker on the first device."""


@dataclass(frozen=True, slots=True)
class SlurmPools:
    """The cluster objects of one SLURM config (nothing submitted until scaled)."""

    cpu: Any
    """`SLURMCluster` of the CPU pool; its scheduler is the one every worker joins."""
    gpu: Any | None
    """`SLURMCluster` of the GPU pool (jobs attached to the CPU pool's scheduler), if any."""


def _common(
    config: SlurmClusterConfig, pool: SlurmCpuPool | SlurmGpuPool, threads: int
) -> dict[str, Any]:
    return {
        "queue": pool.partition,
        "account": pool.account or config.account,
        "walltime": pool.walltime,
        "cores": pool.cores,
        "memory": pool.memory,
        "job_script_prologue": [
            *config.job_script_prologue,
            *pool.job_script_prologue,
            nanny_environ_export(config.nanny_env.environ(threads)),
        ],
        "interface": config.interface,
        "local_directory": config.local_directory,
        "log_directory": config.log_directory,
        "python": config.python,
    }


def cpu_job_kwargs(config: SlurmClusterConfig) -> dict[str, Any]:
    """`SLURMCluster` arguments of the CPU pool."""
    pool = config.cpu
    return {
        **_common(config, pool, pool.threads),
        "job_name": "slidemill-cpu",
        "processes": pool.n_processes,
        "job_extra_directives": list(pool.job_extra_directives),
        "worker_extra_args": list(pool.worker_extra_args),
    }


def gpu_job_kwargs(config: SlurmClusterConfig) -> dict[str, Any]:
    """`SLURMCluster` arguments of the GPU pool: one worker per GPU, each declaring `GPU=1`."""
    pool = config.gpu
    if pool is None:
        raise ValueError("this SLURM config has no GPU pool")
    gres = f"gpu:{pool.gpu_type}:{pool.gpus}" if pool.gpu_type else f"gpu:{pool.gpus}"
    return {
        **_common(config, pool, pool.threads),
        "job_name": "slidemill-gpu",
        "processes": pool.gpus,
        "job_extra_directives": [f"--gres={gres}", *pool.job_extra_directives],
        "worker_extra_args": ["--resources", f"{GPU_RESOURCE}=1", *pool.worker_extra_args],
        "worker_command": CUDA_WORKER if pool.gpus > 1 else DASK_WORKER,
    }


@contextmanager
def slurm_pools(config: SlurmClusterConfig) -> Iterator[SlurmPools]:
    """Create the pools' `SLURMCluster` objects, submitting no job; close them on exit (which
    cancels any job they submitted meanwhile)."""
    jobqueue = require_extra("dask_jobqueue", "slurm")
    with ExitStack() as stack:
        cpu = stack.enter_context(
            jobqueue.SLURMCluster(
                **cpu_job_kwargs(config),
                scheduler_options={"dashboard_address": config.dashboard_address},
            )
        )
        gpu = None
        if config.gpu is not None:
            from slidemill.cluster._slurm_job import AttachedSLURMJob

            gpu = stack.enter_context(
                jobqueue.SLURMCluster(
                    **gpu_job_kwargs(config),
                    job_cls=AttachedSLURMJob,
                    attach_to=cpu.scheduler.address,
                    # this cluster's own scheduler gets no worker: keep it quiet and local
                    scheduler_options={"host": "127.0.0.1", "dashboard": False},
                )
            )
        yield SlurmPools(cpu, gpu)


@contextmanager
def open_slurm(config: SlurmClusterConfig) -> Iterator[Client]:
    """Submit the pools' jobs (adaptively or a fixed number) and yield a client on the CPU pool's
    scheduler; on exit the jobs are cancelled."""
    with slurm_pools(config) as pools:
        if config.cpu.adapt is not None:
            pools.cpu.adapt(
                minimum_jobs=config.cpu.adapt.minimum, maximum_jobs=config.cpu.adapt.maximum
            )
        else:
            pools.cpu.scale(jobs=config.cpu.scale)
        if pools.gpu is not None and config.gpu is not None:
            pools.gpu.scale(jobs=config.gpu.scale)
        with Client(pools.cpu) as client:
            yield client


SLURM = Backend("slurm", SlurmClusterConfig, open_slurm)
