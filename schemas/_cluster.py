"""Where a batch runs: the cluster config file, a union of one model per backend on `backend:`.

A file names one backend and its settings; `cluster/` turns it into a running Dask cluster.
Batch backends (SLURM, Kubernetes) have a CPU worker pool, which reads and tiles and may adapt
between bounds, and an optional GPU worker pool of fixed size whose workers declare the `GPU`
resource that inference tasks ask for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    field_validator,
    model_validator,
)

from slidemill.schemas._version import slidemill_version

LOOPBACK_DASHBOARD = "127.0.0.1:0"
"""The embedded clusters' dashboard: loopback, a free port. Dask's dashboard has no
authentication and shows scheduler identity and worker logs, so it leaves this machine only when
a cluster config says so."""
# SLURM walltime: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
_WALLTIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")
# A byte count as dask and dask-jobqueue read it (`dask.utils.parse_bytes`): a number, then an
# optional unit k/M/G/T/P with an optional "i" and "B", or "B" alone.
_BYTES = re.compile(r"^\d+(\.\d+)?\s*([kKmMgGtTpP]i?[bB]?|[bB])?$")
# Kubernetes resource quantities.
_CPU_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY_QUANTITY = re.compile(r"^\d+(\.\d+)?([KMGTPE]i?|[kmM]|e\d+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# glibc's mmap and trim thresholds for workers (`NannyEnv`): above an encoder batch's tensors.
MALLOC_THRESHOLD = 256 << 20


IMAGE_VERSION_FIELD = "{version}"
"""In a config's container image, the installed slidemill's tag (`image_tag`): the image that
`make images` built from the same code as the client that starts the workers."""


def image_tag(version: str | None = None) -> str:
    """The container image tag of a slidemill version (the installed one by default): the
    version with '+' (a PEP 440 local part, e.g. 0.2.dev3+g1a2b3c4) as '-', which a tag cannot
    hold. `make images` tags with it."""
    return (version or slidemill_version()).replace("+", "-")


def _versioned(image: str | None) -> str | None:
    """`image` with `{version}` filled in (`image_tag`)."""
    return None if image is None else image.replace(IMAGE_VERSION_FIELD, image_tag())


_IMAGE_DESCRIPTION = "'{version}' in it is the installed slidemill's tag (what `make images` tags)."


def _check(pattern: re.Pattern[str], what: str, value: str) -> str:
    if not pattern.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not {what}")
    return value.strip()


def _walltime_seconds(walltime: str) -> float:
    """A SLURM time limit in seconds (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS);
    SLURM reads 0 as no limit, here infinity."""
    days, _, clock = walltime.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # with days, the clock is hours first
        hours, minutes, seconds = (*parts, 0, 0)[:3]
        total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(parts) == 1:
        total = parts[0] * 60
    else:
        hours, minutes, seconds = (0, *parts)[-3:]
        total = (hours * 60 + minutes) * 60 + seconds
    return float(total) if total else math.inf


_LIFETIME_OPTIONS = ("--lifetime", "--lifetime-stagger")
"""The `dask worker` options that retire a worker some time after it starts."""


def _option_values(args: Sequence[str], option: str) -> list[str]:
    """The values `args` give `option`, written `--option value` or `--option=value`."""
    values = []
    for i, arg in enumerate(args):
        if arg == option:
            if i + 1 == len(args):
                raise ValueError(f"{option} needs a value")
            values.append(args[i + 1])
        elif arg.startswith(f"{option}="):
            values.append(arg.split("=", 1)[1])
    return values


def _duration_s(option: str, value: str) -> float:
    """A `dask worker` duration option's value in seconds, read as dask reads it."""
    # imported here: dask costs every command that loads the contracts a tenth of a second,
    # and only a SLURM config with a lifetime reads one
    from dask.utils import parse_timedelta

    try:
        seconds = float(parse_timedelta(value))
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(
            f"{option} {value!r} is not a duration dask reads, such as '55m', '230m' or '3.5h'"
        ) from err
    if not math.isfinite(seconds):
        raise ValueError(f"{option} {value!r} is not a finite duration")
    return seconds


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NannyEnv(_Config):
    """The environment each Dask nanny sets before it starts its worker process.

    Written to `distributed.nanny.pre-spawn-environ`: these variables only take effect when set
    before the worker process starts (glibc reads its `MALLOC_*_` at start-up, BLAS and
    OpenMP size their thread pools on import). As distributed does, a variable already exported
    in the environment that starts the workers takes precedence over these values.
    """

    malloc_mmap_threshold: int | None = Field(
        default=MALLOC_THRESHOLD,
        ge=0,
        description="MALLOC_MMAP_THRESHOLD_ in bytes: glibc allocates blocks above this with "
        "mmap, and each such block page-faults afresh. glibc's own threshold grows to at most "
        "32 MiB, below an encoder batch's tensors (64 × 256² × 3 float32 = 50 MiB). slidemill's "
        "256 MiB keeps them in the heap, so each batch reuses pages already mapped instead of "
        "faulting in a fresh mapping. null leaves it unset.",
    )
    malloc_trim_threshold: int | None = Field(
        default=MALLOC_THRESHOLD,
        ge=0,
        description="MALLOC_TRIM_THRESHOLD_ in bytes: glibc returns freed memory at the top of "
        "the heap above this to the operating system, to be page-faulted back on the next "
        "batch. 256 MiB (slidemill's default) keeps a batch's worth; distributed's 65536 "
        "returns nearly everything, for less resident memory and slower encoding and tiling.",
    )
    blas_threads: int | None = Field(
        default=None,
        ge=1,
        description="OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS (torch's "
        "intra-op threads follow OMP_NUM_THREADS); null = the worker's threads.",
    )
    extra: dict[str, str] = Field(
        default_factory=dict, description="More variables to set in every worker process."
    )

    @field_validator("extra")
    @classmethod
    def _names(cls, extra: dict[str, str]) -> dict[str, str]:
        bad = [name for name in extra if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(map(repr, bad))}")
        return extra

    def environ(self, threads: int) -> dict[str, str | None]:
        """The variables for a worker with `threads` threads (None: leave the variable unset,
        overriding distributed's own default)."""
        blas = str(self.blas_threads or threads)
        mmap, trim = self.malloc_mmap_threshold, self.malloc_trim_threshold
        return {
            "MALLOC_MMAP_THRESHOLD_": None if mmap is None else str(mmap),
            "MALLOC_TRIM_THRESHOLD_": None if trim is None else str(trim),
            "OMP_NUM_THREADS": blas,
            "MKL_NUM_THREADS": blas,
            "OPENBLAS_NUM_THREADS": blas,
            **self.extra,
        }


class Adapt(_Config):
    """Bounds for adaptive scaling, in the batch system's units (SLURM jobs, Kubernetes pods)."""

    minimum: int = Field(default=0, ge=0, description="Fewest jobs/pods kept, even when idle.")
    maximum: int = Field(ge=1, description="Most jobs/pods asked for at once.")

    @model_validator(mode="after")
    def _ordered(self) -> Adapt:
        if self.minimum > self.maximum:
            raise ValueError(
                f"adapt minimum ({self.minimum}) is larger than adapt maximum ({self.maximum})"
            )
        return self


class TlsFiles(_Config):
    """Certificate files for TLS between client, scheduler and workers (PEM). Every job or pod
    reads them, so on a batch system they must be on storage the compute nodes see."""

    ca_file: Path = Field(description="The CA that signed the certificates; peers must match it.")
    cert_file: Path = Field(description="The certificate every role presents.")
    key_file: Path | None = Field(
        default=None, description="Its private key; null = inside cert_file."
    )


TlsSetting = TlsFiles | bool
"""`tls:` of a backend that listens beyond loopback: true (the default) = temporary
certificates made for the run; a mapping = certificate files; false = plain TCP (anyone who
can reach the scheduler's port can run code as you: only on a trusted network, with a
warning)."""

TLS_DESCRIPTION = (
    "TLS between client, scheduler and workers: true = temporary certificates made for this "
    "run (the default), {ca_file, cert_file, key_file} = certificate files, false = plain TCP "
    "(a warning; anyone reaching the scheduler's port could run code as you)."
)

KUBERNETES_TLS_DESCRIPTION = (
    f"{TLS_DESCRIPTION} The pods read the certificates from a Secret created for the run "
    "(`<name>-tls`, deleted with the cluster); certificate files are read on the machine that "
    "runs slidemill and copied into it."
)


# ---------------------------------------------------------------------------------------------
# local and existing


class LocalClusterConfig(_Config):
    """An embedded `distributed.LocalCluster` of worker processes on this machine (the default)."""

    backend: Literal["local"] = "local"
    n_workers: int | None = Field(
        default=None, ge=1, description="Worker processes; null = one per core."
    )
    threads_per_worker: int = Field(default=1, ge=1, description="Threads in each worker.")
    memory_limit: str | None = Field(
        default=None,
        description="Memory limit per worker ('4GiB', 'auto'); null = 90% of RAM / workers.",
    )
    dashboard_address: str = Field(
        default=LOOPBACK_DASHBOARD,
        description="Dashboard bind address: loopback and a free port by default (the dashboard "
        "has no authentication); ':0' listens on every interface.",
    )
    nanny_env: NannyEnv = NannyEnv()

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "auto":
            return value
        return _check(_BYTES, "a byte size such as '4GiB'", value)

    @property
    def gpu_pool(self) -> bool:
        """Whether this config starts workers that declare a `GPU` resource."""
        return False


class ExistingClusterConfig(_Config):
    """A Dask scheduler that is already running; slidemill starts and stops nothing."""

    backend: Literal["existing"]
    scheduler: str | None = Field(
        default=None, description="Scheduler address, e.g. tcp://10.0.0.5:8786."
    )
    scheduler_file: Path | None = Field(
        default=None, description="A scheduler file written by `dask scheduler --scheduler-file`."
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for the scheduler.")
    tls: TlsFiles | Literal[False] | None = Field(
        default=None,
        description="A tls:// scheduler's certificate files ({ca_file, cert_file, key_file}); "
        "false = plain TCP to a scheduler beyond loopback, allowed with a warning; null = "
        "plain TCP only on loopback.",
    )

    @model_validator(mode="after")
    def _one_address(self) -> ExistingClusterConfig:
        if (self.scheduler is None) == (self.scheduler_file is None):
            raise ValueError("give exactly one of scheduler (an address) or scheduler_file")
        if self.scheduler is not None and "://" not in self.scheduler:
            raise ValueError(
                f"scheduler {self.scheduler!r} needs a protocol, e.g. tcp://{self.scheduler}"
            )
        return self

    @property
    def gpu_pool(self) -> bool:
        """Unknown before connecting: ask the scheduler (`cluster.gpu_workers`)."""
        return False


# ---------------------------------------------------------------------------------------------
# SLURM (dask-jobqueue)


class _SlurmPool(_Config):
    partition: str | None = Field(
        default=None,
        validation_alias=AliasChoices("partition", "queue"),
        description="SLURM partition (#SBATCH -p; dask-jobqueue's `queue`). Also read as `queue`.",
    )
    account: str | None = Field(
        default=None, description="This pool's account (#SBATCH -A); null = the shared one."
    )
    walltime: str = Field(default="01:00:00", description="Job time limit (#SBATCH -t).")
    cores: int = Field(ge=1, description="CPU cores per job (#SBATCH --cpus-per-task).")
    memory: str = Field(description="Memory per job, e.g. '64GB' (#SBATCH --mem).")
    job_extra_directives: list[str] = Field(
        default_factory=list, description="More #SBATCH options, e.g. '--qos=normal'."
    )
    job_script_prologue: list[str] = Field(
        default_factory=list, description="Shell lines run after the shared prologue."
    )
    worker_extra_args: list[str] = Field(
        default_factory=list,
        description="More `dask worker` arguments, e.g. ['--lifetime', '55m', "
        "'--lifetime-stagger', '2m'] to retire workers before the walltime. slidemill raises a "
        "lifetime too short for a worker to start, load the model and finish a task (more as it "
        "measures the workers during a batch) and keeps it under the walltime; `slidemill "
        "cluster check` shows what the jobs get.",
    )
    scale: int | None = Field(default=None, ge=0, description="A fixed number of jobs.")
    adapt: Adapt | None = Field(default=None, description="Adaptive bounds, in jobs.")

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        return _check(_WALLTIME, "a SLURM time such as '04:00:00' or '1-12:00:00'", value)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        return _check(_BYTES, "a memory size such as '64GB'", value)

    @field_validator("worker_extra_args")
    @classmethod
    def _lifetime_args(cls, args: list[str]) -> list[str]:
        # a value dask cannot read would only fail in each job, as its worker starts
        for option in _LIFETIME_OPTIONS:
            values = _option_values(args, option)
            if len(values) > 1:
                raise ValueError(f"{option} is given {len(values)} times; give it once")
            for value in values:
                _duration_s(option, value)
        return args

    @property
    def walltime_s(self) -> float:
        """`walltime` in seconds (infinity for SLURM's 0, no limit)."""
        return _walltime_seconds(self.walltime)

    @property
    def lifetime_s(self) -> float | None:
        """`--lifetime` of `worker_extra_args` in seconds; None when it is not given or 0
        (which dask reads as none)."""
        values = _option_values(self.worker_extra_args, "--lifetime")
        seconds = _duration_s("--lifetime", values[0]) if values else 0.0
        return seconds or None

    @property
    def lifetime_stagger_s(self) -> float:
        """`--lifetime-stagger` of `worker_extra_args` in seconds; 0 when it is not given."""
        values = _option_values(self.worker_extra_args, "--lifetime-stagger")
        return _duration_s("--lifetime-stagger", values[0]) if values else 0.0


class SlurmCpuPool(_SlurmPool):
    """The CPU pool: its `SLURMCluster` runs the scheduler; its workers read and tile."""

    processes: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes per job; null = cores (single-threaded workers).",
    )

    @model_validator(mode="after")
    def _sizes(self) -> SlurmCpuPool:
        if self.processes is not None and self.cores % self.processes:
            raise ValueError(
                f"cores ({self.cores}) must be a multiple of processes ({self.processes})"
            )
        if (self.scale is None) == (self.adapt is None):
            raise ValueError(
                "give either scale (a fixed number of jobs) or adapt: {minimum, maximum}"
            )
        return self

    @property
    def n_processes(self) -> int:
        """Worker processes per job."""
        return self.processes or self.cores

    @property
    def threads(self) -> int:
        """Threads per worker process."""
        return self.cores // self.n_processes


class SlurmGpuPool(_SlurmPool):
    """The GPU pool: one worker per GPU, each with `--resources GPU=1`; a fixed number of jobs."""

    gpus: int = Field(description="GPUs per job (#SBATCH --gres=gpu:N); one worker per GPU.")
    gpu_type: str | None = Field(
        default=None, description="GPU type in the gres, e.g. 'a100' for --gres=gpu:a100:N."
    )

    @field_validator("gpus")
    @classmethod
    def _some_gpus(cls, gpus: int) -> int:
        if gpus < 1:
            raise ValueError(f"a GPU pool needs gpus >= 1 per job (got {gpus})")
        return gpus

    @model_validator(mode="after")
    def _sizes(self) -> SlurmGpuPool:
        if self.cores % self.gpus:
            raise ValueError(
                f"cores ({self.cores}) must be a multiple of gpus ({self.gpus}): each GPU's "
                "worker gets cores / gpus threads"
            )
        if self.adapt is not None:
            raise ValueError(
                "a GPU pool has a fixed size (scale: N jobs); only the CPU pool adapts, because "
                "Dask's adaptive target does not look at worker resources"
            )
        if self.scale is None:
            raise ValueError("give the GPU pool's size: scale: N (jobs)")
        return self

    @property
    def threads(self) -> int:
        """Threads per worker process."""
        return self.cores // self.gpus


class SlurmContainer(_Config):
    """Workers inside slidemill's worker image on the compute nodes: each job starts them with
    podman (rootless, the node's network) or Apptainer, instead of a Python on the nodes."""

    runtime: Literal["podman", "apptainer"] = Field(
        description="podman (`podman run`) or apptainer (`apptainer exec`)."
    )
    image: str = Field(
        description="podman: an image in the nodes' storage (`podman load` of `podman save`, "
        "or a registry's); apptainer: a .sif file every node sees, or docker-archive:FILE. "
        + _IMAGE_DESCRIPTION
    )
    binds: list[str] = Field(
        default_factory=list,
        description="Host folders the workers see at the same path: the slides, the output "
        "folder, the models. local_directory and, with TLS, shared_temp_directory are added.",
    )
    options: list[str] = Field(
        default_factory=list,
        description="More arguments for `podman run` / `apptainer exec`, before the image "
        "(e.g. ['--ulimit', 'nofile=65536:65536']).",
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _versioned(value) or value


class SlurmClusterConfig(_Config):
    """SLURM through dask-jobqueue: a CPU pool and an optional GPU pool, one scheduler."""

    backend: Literal["slurm"]
    account: str | None = Field(default=None, description="Account for every job (#SBATCH -A).")
    job_script_prologue: list[str] = Field(
        default_factory=list,
        description="Shell lines before the worker starts in every job: module loads, "
        "activating the environment that has slidemill installed.",
    )
    python: str | None = Field(
        default=None,
        description="Python on the compute nodes; null = the one running slidemill (or the "
        "image's, with `container`).",
    )
    container: SlurmContainer | None = Field(
        default=None,
        description="Start the workers inside slidemill's worker image (podman or Apptainer); "
        "null = in the nodes' own Python.",
    )
    interface: str | None = Field(
        default=None, description="Network interface for scheduler and workers, e.g. 'ib0'."
    )
    local_directory: str | None = Field(
        default=None, description="Node-local scratch for workers, e.g. '$TMPDIR'."
    )
    log_directory: str | None = Field(default=None, description="Where SLURM writes job logs.")
    dashboard_address: str = Field(
        default="127.0.0.1:8787",
        description="Scheduler dashboard address: loopback by default (the dashboard has no "
        "authentication); ':8787' listens on every interface.",
    )
    tls: TlsSetting = Field(default=True, description=TLS_DESCRIPTION)
    shared_temp_directory: str = Field(
        default="~/.slidemill/tls",
        description="Where temporary certificates are written for the jobs to read (created "
        "0700, files 0600, removed when the cluster closes): a folder every compute node sees.",
    )
    start_timeout: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds a pool's jobs may wait in the queue before any of its workers "
        "joins; then the batch stops with SLURM's reason for each job.",
    )
    nanny_env: NannyEnv = NannyEnv()
    cpu: SlurmCpuPool
    gpu: SlurmGpuPool | None = None

    @model_validator(mode="after")
    def _one_python(self) -> SlurmClusterConfig:
        if self.container is not None and self.python is not None:
            raise ValueError(
                "give python (the nodes' own) or container (the image's python), not both"
            )
        return self

    @property
    def gpu_pool(self) -> bool:
        """Whether this config starts workers that declare a `GPU` resource."""
        return self.gpu is not None


# ---------------------------------------------------------------------------------------------
# Kubernetes (dask-kubernetes operator)


class _KubernetesPool(_Config):
    image: str | None = Field(
        default=None, description=f"Worker image; null = the cluster's. {_IMAGE_DESCRIPTION}"
    )
    threads: int = Field(default=1, ge=1, description="Threads in each worker (one per pod).")
    cpu: str | None = Field(
        default=None, description="CPU request and limit per pod ('2', '500m'); null = threads."
    )
    memory: str = Field(description="Memory request and limit per pod, e.g. '8Gi'.")
    env: dict[str, str] = Field(default_factory=dict, description="More pod environment.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, str | int]] = Field(
        default_factory=list, description="Pod tolerations (e.g. for tainted GPU nodes)."
    )
    scale: int | None = Field(default=None, ge=0, description="A fixed number of pods.")
    adapt: Adapt | None = Field(default=None, description="Adaptive bounds, in pods.")

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | None) -> str | None:
        return None if value is None else _check(_CPU_QUANTITY, "a CPU quantity", value)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return _versioned(value)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        return _check(_MEMORY_QUANTITY, "a Kubernetes memory quantity such as '8Gi'", value)

    @property
    def cpu_quantity(self) -> str:
        """CPU request and limit."""
        return self.cpu or str(self.threads)


class KubernetesCpuPool(_KubernetesPool):
    """The default worker group: reads and tiles; may adapt (the operator's DaskAutoscaler)."""

    @model_validator(mode="after")
    def _size(self) -> KubernetesCpuPool:
        if (self.scale is None) == (self.adapt is None):
            raise ValueError(
                "give either scale (a fixed number of pods) or adapt: {minimum, maximum}"
            )
        return self


class KubernetesGpuPool(_KubernetesPool):
    """An extra worker group whose pods each hold one GPU and run `--resources GPU=1`."""

    gpus: int = Field(description="GPUs per pod (nvidia.com/gpu limit); must be 1.")

    @model_validator(mode="after")
    def _size(self) -> KubernetesGpuPool:
        if self.gpus < 1:
            raise ValueError(f"a GPU pool needs gpus: 1 per pod (got {self.gpus})")
        if self.gpus > 1:
            raise ValueError(
                f"gpus: {self.gpus}: one GPU per worker pod (each worker uses one device and "
                "the operator scales pods of one worker); ask for more pods with scale"
            )
        if self.adapt is not None:
            raise ValueError(
                "a GPU worker group has a fixed size (scale: N pods); the operator's autoscaler "
                "only scales the default (CPU) group"
            )
        if self.scale is None:
            raise ValueError("give the GPU pool's size: scale: N (pods)")
        return self


class KubernetesClusterConfig(_Config):
    """Kubernetes through the dask-kubernetes operator: a DaskCluster plus a GPU worker group."""

    backend: Literal["kubernetes"]
    name: str = Field(
        default="slidemill-{uuid}",
        description="DaskCluster name; '{user}' and '{uuid}' are filled in.",
    )
    namespace: str | None = Field(
        default=None, description="Namespace; null = the current context's."
    )
    image: str = Field(
        description=f"Container image with slidemill installed. {_IMAGE_DESCRIPTION}"
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment for every pod.")
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod volumes of every worker, e.g. the PVC holding slides and outputs "
        "(every worker must see the output folder).",
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list, description="Where the worker container mounts `volumes`."
    )
    scheduler_cpu: str = Field(default="1", description="Scheduler pod CPU request and limit.")
    scheduler_memory: str = Field(default="2Gi", description="Scheduler pod memory.")
    scheduler_service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    idle_timeout: int = Field(
        default=0, ge=0, description="Seconds idle before the operator deletes it; 0 = never."
    )
    tls: TlsSetting = Field(default=True, description=KUBERNETES_TLS_DESCRIPTION)
    nanny_env: NannyEnv = NannyEnv()
    cpu: KubernetesCpuPool
    gpu: KubernetesGpuPool | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _versioned(value) or value

    @field_validator("scheduler_cpu")
    @classmethod
    def _scheduler_cpu(cls, value: str) -> str:
        return _check(_CPU_QUANTITY, "a CPU quantity", value)

    @field_validator("scheduler_memory")
    @classmethod
    def _scheduler_memory(cls, value: str) -> str:
        return _check(_MEMORY_QUANTITY, "a Kubernetes memory quantity such as '2Gi'", value)

    @model_validator(mode="after")
    def _mounted_volumes_exist(self) -> KubernetesClusterConfig:
        names = {v.get("name") for v in self.volumes}
        missing = [m.get("name") for m in self.volume_mounts if m.get("name") not in names]
        if missing:
            raise ValueError(
                f"volume_mounts name volumes not listed in volumes: {', '.join(map(str, missing))}"
            )
        return self

    @property
    def gpu_pool(self) -> bool:
        """Whether this config starts workers that declare a `GPU` resource."""
        return self.gpu is not None


# ---------------------------------------------------------------------------------------------
# CUDA node (dask-cuda)


class CudaClusterConfig(_Config):
    """A multi-GPU machine through dask-cuda's `LocalCUDACluster`: one worker per GPU, each with
    `GPU=1`, plus optional CPU-only workers for reading and tiling."""

    backend: Literal["cuda"]
    devices: list[int | str] | None = Field(
        default=None,
        description="CUDA_VISIBLE_DEVICES to use (indices or UUIDs); null = all visible.",
    )
    threads_per_worker: int = Field(default=1, ge=1, description="Threads in each worker.")
    memory_limit: str | None = Field(
        default=None, description="Host memory limit per worker; null = dask-cuda's 'auto'."
    )
    device_memory_limit: str | float | None = Field(
        default=None,
        description="Device memory before spilling to host ('30GB' or a fraction); "
        "null = dask-cuda's default.",
    )
    cpu_workers: int = Field(
        default=0,
        ge=0,
        description="Extra CPU-only workers (no GPU resource, no visible GPU) for reading and "
        "tiling, beside the GPU workers.",
    )
    local_directory: str | None = Field(default=None, description="Scratch for workers.")
    dashboard_address: str = Field(
        default=LOOPBACK_DASHBOARD, description="Dashboard bind address, loopback by default."
    )
    nanny_env: NannyEnv = NannyEnv()

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, devices: list[int | str] | None) -> list[int | str] | None:
        if devices is not None and not devices:
            raise ValueError("devices is empty; leave it out to use every visible GPU")
        return devices

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "auto":
            return value
        return _check(_BYTES, "a byte size such as '32GiB'", value)

    @property
    def gpu_pool(self) -> bool:
        """Whether this config starts workers that declare a `GPU` resource."""
        return True


AnyClusterConfig = Annotated[
    LocalClusterConfig
    | ExistingClusterConfig
    | SlurmClusterConfig
    | KubernetesClusterConfig
    | CudaClusterConfig,
    Field(discriminator="backend"),
]
"""One backend's validated config, chosen by its `backend` field."""

BACKEND_NAMES: tuple[str, ...] = ("local", "existing", "slurm", "kubernetes", "cuda")
"""The values `backend:` may take."""


class ClusterConfig(RootModel[AnyClusterConfig]):
    """A cluster config file: `backend:` names the backend, the other keys are its settings."""

    model_config = ConfigDict(frozen=True)
