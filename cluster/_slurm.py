"""SLURM through dask-jobqueue: a CPU pool that owns the scheduler and adapts, and an optional
GPU pool of fixed size whose workers declare `GPU=1`.

The job scripts are dask-jobqueue's own (`SLURMCluster.job_script()`); slidemill only chooses the
arguments. `slurm_pools` creates the cluster objects without submitting anything (creating one
starts its scheduler in this process), so the scripts can be inspected before a run.

Scheduler and workers speak TLS unless the config says `tls: false`: temporary certificates are
written to `shared_temp_directory` for the jobs to read (dask-jobqueue's mechanism), or the
config names certificate files. Before any job is submitted, `sbatch --test-only` checks each
pool's job script, so a job SLURM refuses (a partition that does not exist, more memory than a
node has) stops the run with SLURM's own message; a pool whose jobs then wait in the queue
longer than `start_timeout` stops the batch with SLURM's reason (`cluster._starting`).

A pool's `--lifetime` is raised to what a worker needs to do any work and kept under the
walltime (`cluster._lifetime`); during a run a scheduler plugin raises it further, for the jobs
adapt starts later, once it has seen how long workers take to load the model and finish a task.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client

from slidemill.cluster._backend import (
    GPU_RESOURCE,
    Backend,
    nanny_environ_export,
    require_extra,
)
from slidemill.cluster._lifetime import (
    LIFETIME_FLOOR_S,
    WALLTIME_MARGIN_S,
    Lifetime,
    LifetimeFit,
    PoolLifetime,
    fit_lifetime,
    with_lifetime,
)
from slidemill.cluster._security import tls_security
from slidemill.cluster._starting import PoolWatch, watching
from slidemill.cluster.errors import ClusterConfigError, PoolStartError
from slidemill.schemas import SlurmClusterConfig, SlurmCpuPool, SlurmGpuPool, TlsFiles

log = logging.getLogger(__name__)

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
        "python": container_python(config, gpu=isinstance(pool, SlurmGpuPool))
        if config.container is not None
        else config.python,
    }


def _bound(folder: str) -> str:
    """A folder as podman's and apptainer's `SRC:DST`, the same path inside, in double quotes
    so that the job's shell expands a variable in it ($TMPDIR)."""
    return f'"{folder}:{folder}"'


def container_python(config: SlurmClusterConfig, gpu: bool) -> str:
    """The job script's `python` when workers run in the worker image (`container`): the
    runtime's command line, then the image's python, which dask-jobqueue follows with
    `-m distributed.cli.dask_worker ...`. The node's network (the scheduler is reached as from
    the node), the job's dask settings (`DASK_*`, the nannies' environment), the configured
    folders plus node-local scratch and the TLS files' folder at the same paths; a GPU job's
    devices (podman: CDI's nvidia.com/gpu, apptainer: --nv)."""
    container = config.container
    if container is None:
        raise ValueError("this SLURM config has no container")
    folders = [*container.binds]
    if config.local_directory:
        folders.append(config.local_directory)
    if isinstance(config.tls, TlsFiles):  # the lab's own certificates, where they are
        files = (config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
        folders.extend(dict.fromkeys(str(f.expanduser().parent) for f in files if f))
    elif config.tls:  # the run's, written where dask-jobqueue writes them
        folders.append(str(Path(config.shared_temp_directory).expanduser()))
    if container.runtime == "podman":
        words = [
            "podman", "run", "--rm", "--network=host", "--userns=keep-id",
            "'--env=DASK_*'", "'--env=SLURM_*'",
            *(["--device=nvidia.com/gpu=all", "--env=CUDA_VISIBLE_DEVICES"] if gpu else []),
            *(f"--volume={_bound(f)}" for f in folders),
        ]  # fmt: skip
    else:
        words = [
            "apptainer", "exec", *(["--nv"] if gpu else []),
            *(f"--bind={_bound(f)}" for f in folders),
        ]  # fmt: skip
    return " ".join([*words, *map(shlex.quote, [*container.options, container.image, "python"])])


def pool_lifetime(name: str, pool: SlurmCpuPool | SlurmGpuPool) -> tuple[Lifetime, Lifetime] | None:
    """A pool's worker lifetime as configured and as its jobs get it (`fit_lifetime`, before
    anything is measured); None when its workers have no `--lifetime`. Raises
    `ClusterConfigError` when its walltime is too short for any lifetime."""
    if pool.lifetime_s is None:
        return None
    configured = Lifetime(pool.lifetime_s, pool.lifetime_stagger_s)
    try:
        fitted = fit_lifetime(configured, pool.walltime_s)
    except ValueError as err:
        shortest = _slurm_time(LIFETIME_FLOOR_S + WALLTIME_MARGIN_S)
        raise ClusterConfigError(
            f"SLURM pool {name!r}: walltime {pool.walltime} is too short for --lifetime: a "
            f"worker gets at least {LIFETIME_FLOOR_S:g} s to start, load the model and finish a "
            f"task, and retires {WALLTIME_MARGIN_S:g} s before the walltime; give a walltime of "
            f"at least {shortest}, or no --lifetime"
        ) from err
    return configured, fitted


def _slurm_time(seconds: float) -> str:
    whole = math.ceil(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _worker_args(name: str, pool: SlurmCpuPool | SlurmGpuPool) -> list[str]:
    """The pool's `worker_extra_args`, with its lifetime as its jobs get it (as written when
    that is the configured one)."""
    lifetimes = pool_lifetime(name, pool)
    if lifetimes is None or lifetimes[0] == lifetimes[1]:
        return list(pool.worker_extra_args)
    return with_lifetime(pool.worker_extra_args, lifetimes[1])


def _log_fitted_lifetime(name: str, pool: SlurmCpuPool | SlurmGpuPool) -> None:
    """One line when a pool's jobs get another lifetime than its config gives."""
    lifetimes = pool_lifetime(name, pool)
    if lifetimes is None or lifetimes[0] == lifetimes[1]:
        return
    configured, fitted = lifetimes
    why = []
    if fitted.shortest_s > configured.shortest_s:
        why.append(
            "too short for a worker to start, load the model and finish a task "
            f"(at least {LIFETIME_FLOOR_S:g} s)"
        )
    if fitted.longest_s < configured.longest_s:
        why.append(f"past its walltime {pool.walltime} less {WALLTIME_MARGIN_S:g} s")
    log.warning(
        "SLURM pool %r: %s is %s; its workers get %s", name, configured, " and ".join(why), fitted
    )


def cpu_job_kwargs(config: SlurmClusterConfig) -> dict[str, Any]:
    """`SLURMCluster` arguments of the CPU pool."""
    pool = config.cpu
    return {
        **_common(config, pool, pool.threads),
        "job_name": "slidemill-cpu",
        "processes": pool.n_processes,
        "job_extra_directives": list(pool.job_extra_directives),
        "worker_extra_args": _worker_args("cpu", pool),
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
        "worker_extra_args": ["--resources", f"{GPU_RESOURCE}=1", *_worker_args("gpu", pool)],
        "worker_command": CUDA_WORKER if pool.gpus > 1 else DASK_WORKER,
    }


def _shared_temp_directory(config: SlurmClusterConfig) -> str:
    """The folder for temporary certificates, created private to this account."""
    folder = Path(os.path.expandvars(config.shared_temp_directory)).expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return str(folder)


@contextmanager
def slurm_pools(config: SlurmClusterConfig) -> Iterator[SlurmPools]:
    """Create the pools' `SLURMCluster` objects, submitting no job; close them on exit (which
    cancels any job they submitted meanwhile)."""
    _log_fitted_lifetime("cpu", config.cpu)  # or refuse a walltime too short, before anything
    if config.gpu is not None:
        _log_fitted_lifetime("gpu", config.gpu)
    jobqueue = require_extra("dask_jobqueue", "slurm")
    security = tls_security(config.tls, "the SLURM cluster")
    tls: dict[str, Any] = {}
    if security is not None:
        tls = {
            "security": security,
            "protocol": "tls://",
            "shared_temp_directory": _shared_temp_directory(config),
        }
    with ExitStack() as stack:
        cpu = stack.enter_context(
            jobqueue.SLURMCluster(
                **cpu_job_kwargs(config),
                **tls,
                scheduler_options={"dashboard_address": config.dashboard_address},
            )
        )
        gpu = None
        if config.gpu is not None:
            from slidemill.cluster._slurm_job import AttachedSLURMJob

            gpu = stack.enter_context(
                jobqueue.SLURMCluster(
                    **gpu_job_kwargs(config),
                    **tls,
                    job_cls=AttachedSLURMJob,
                    attach_to=cpu.scheduler.address,
                    # this cluster's own scheduler gets no worker: keep it quiet and local
                    scheduler_options={"host": "127.0.0.1", "dashboard": False},
                )
            )
        stack.callback(_remove_certificates, cpu, gpu)  # after the clusters have closed
        yield SlurmPools(cpu, gpu)


def _remove_certificates(*clusters: Any) -> None:
    """Delete the temporary certificates dask-jobqueue wrote for the jobs (it keeps them open
    until the cluster object is garbage-collected)."""
    for cluster in clusters:
        for key in ("ca_file", "cert", "key"):
            handle = getattr(cluster, f"_job_{key}", None)
            if handle is not None:
                handle.close()


def check_submission(pool: str, script: str) -> None:
    """`sbatch --test-only` on a pool's job script: raise `PoolStartError` with SLURM's
    message when SLURM would refuse the job (it submits nothing)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise PoolStartError(f"SLURM pool {pool!r}: sbatch is not on the PATH of this machine")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="slidemill-check-") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run(
            [sbatch, "--test-only", f.name], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower()), None)
        raise PoolStartError(
            f"SLURM pool {pool!r}: sbatch refused its job: "
            f"{reason or (lines[0] if lines else f'exit status {proc.returncode}')}"
        )


def _has_gpu(resources: Mapping[str, float]) -> bool:
    return bool(resources.get(GPU_RESOURCE))


def _has_no_gpu(resources: Mapping[str, float]) -> bool:
    return not _has_gpu(resources)


def _no_gpu(worker: Mapping[str, Any]) -> bool:
    return _has_no_gpu(worker.get("resources", {}))


def _gpu(worker: Mapping[str, Any]) -> bool:
    return _has_gpu(worker.get("resources", {}))


def _new_jobs_get(cluster: Any) -> Callable[[Lifetime], None]:
    """Sets the lifetime of the jobs `cluster` creates from now on."""

    def apply(lifetime: Lifetime) -> None:
        # dask-jobqueue builds every job from `new_spec`'s options, the one dict each job's spec
        # shares (the job a retired one's spec re-opens too); jobs already running keep theirs
        options = cluster.new_spec["options"]
        options["worker_extra_args"] = with_lifetime(options["worker_extra_args"], lifetime)

    return apply


def lifetime_fit(config: SlurmClusterConfig, pools: SlurmPools) -> LifetimeFit | None:
    """The scheduler plugin that raises the pools' lifetimes for later jobs as it measures
    their workers; None when no pool's workers have a lifetime."""
    watched = []
    for name, pool, cluster, is_member in (
        ("cpu", config.cpu, pools.cpu, _has_no_gpu),
        ("gpu", config.gpu, pools.gpu, _has_gpu),
    ):
        if pool is None or cluster is None:
            continue
        lifetimes = pool_lifetime(name, pool)
        if lifetimes is None:
            continue
        watched.append(
            PoolLifetime(
                f"SLURM pool {name!r}",
                lifetimes[1],
                pool.walltime_s,
                is_member,
                _new_jobs_get(cluster),
            )
        )
    return LifetimeFit(pools.cpu.scheduler, watched) if watched else None


@contextmanager
def open_slurm(config: SlurmClusterConfig) -> Iterator[Client]:
    """Check the pools' job scripts with SLURM, submit their jobs (adaptively or a fixed
    number) and yield a client on the CPU pool's scheduler, watched until each pool starts; on
    exit the jobs are cancelled."""
    with slurm_pools(config) as pools:
        check_submission("cpu", pools.cpu.job_script())
        watches = [PoolWatch("SLURM pool 'cpu'", pools.cpu, _no_gpu, config.start_timeout)]
        if pools.gpu is not None:
            check_submission("gpu", pools.gpu.job_script())
            watches.append(PoolWatch("SLURM pool 'gpu'", pools.gpu, _gpu, config.start_timeout))
        fit = lifetime_fit(config, pools)
        if fit is not None:
            fit.add_to(pools.cpu)
        if config.cpu.adapt is not None:
            pools.cpu.adapt(
                minimum_jobs=config.cpu.adapt.minimum, maximum_jobs=config.cpu.adapt.maximum
            )
        else:
            pools.cpu.scale(jobs=config.cpu.scale)
        if pools.gpu is not None and config.gpu is not None:
            pools.gpu.scale(jobs=config.gpu.scale)
        with Client(pools.cpu) as client, watching(client, watches):
            yield client


SLURM = Backend("slurm", SlurmClusterConfig, open_slurm)
