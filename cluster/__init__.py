"""Where work runs: a Dask cluster chosen by a validated config file.

Backends: the embedded LocalCluster (the default), an existing scheduler, SLURM (dask-jobqueue),
Kubernetes (the dask-kubernetes operator) and a multi-GPU node (dask-cuda). `connect` hands back
a `distributed.Client` either way; nothing else in slidemill knows which. CPU pools read and tile;
GPU pools declare a `GPU` resource and run inference. SLURM, Kubernetes and an existing scheduler
speak TLS unless their config says otherwise; `check_pools` tells a batch that a pool never started.
SLURM workers that retire through `--lifetime` live long enough to do work and end before the
walltime (`fit_lifetime`, and `LifetimeFit` raising it for later jobs as it measures them).
"""

from slidemill.cluster._backend import (
    GPU_RESOURCE,
    PRE_SPAWN_ENVIRON,
    PRE_SPAWN_ENVIRON_VAR,
    Backend,
    nanny_environ,
    require_extra,
)
from slidemill.cluster._config import (
    ClusterSettings,
    example_config,
    example_names,
    load_cluster_config,
)
from slidemill.cluster._connect import connect, gpu_workers, register_worker_plugin
from slidemill.cluster._kubernetes import (
    CA_PEM,
    CERT_PEM,
    HTTP_ROUTES_VAR,
    KEY_PEM,
    REQUIRE_ENCRYPTION_VAR,
    SCHEDULER_ADDRESS_VAR,
    SCHEDULER_API_ROUTE,
    SCHEDULER_PORT,
    TLS_MOUNT,
    TLS_VOLUME,
    KubernetesSpec,
    kubernetes_spec,
    tls_material,
    tls_paths,
    tls_secret,
)
from slidemill.cluster._lifetime import (
    LIFETIME_FLOOR_S,
    LIFETIME_MULTIPLE,
    WALLTIME_MARGIN_S,
    Lifetime,
    LifetimeFit,
    Pace,
    PoolLifetime,
    fit_lifetime,
    refit,
    with_lifetime,
)
from slidemill.cluster._preview import preview
from slidemill.cluster._registry import BACKENDS
from slidemill.cluster._security import existing_security, is_loopback, tls_security
from slidemill.cluster._slurm import (
    CUDA_WORKER,
    SlurmPools,
    container_python,
    cpu_job_kwargs,
    gpu_job_kwargs,
    lifetime_fit,
    pool_lifetime,
    slurm_pools,
)
from slidemill.cluster._starting import QueuedJob, check_pools, start_failure
from slidemill.cluster.errors import (
    ClusterConfigError,
    ClusterError,
    MissingExtraError,
    PoolStartError,
)

__all__ = [
    "BACKENDS",
    "CA_PEM",
    "CERT_PEM",
    "CUDA_WORKER",
    "GPU_RESOURCE",
    "HTTP_ROUTES_VAR",
    "KEY_PEM",
    "LIFETIME_FLOOR_S",
    "LIFETIME_MULTIPLE",
    "PRE_SPAWN_ENVIRON",
    "PRE_SPAWN_ENVIRON_VAR",
    "REQUIRE_ENCRYPTION_VAR",
    "SCHEDULER_ADDRESS_VAR",
    "SCHEDULER_API_ROUTE",
    "SCHEDULER_PORT",
    "TLS_MOUNT",
    "TLS_VOLUME",
    "WALLTIME_MARGIN_S",
    "Backend",
    "ClusterConfigError",
    "ClusterError",
    "ClusterSettings",
    "KubernetesSpec",
    "Lifetime",
    "LifetimeFit",
    "MissingExtraError",
    "Pace",
    "PoolLifetime",
    "PoolStartError",
    "QueuedJob",
    "SlurmPools",
    "check_pools",
    "connect",
    "container_python",
    "cpu_job_kwargs",
    "example_config",
    "example_names",
    "existing_security",
    "fit_lifetime",
    "gpu_job_kwargs",
    "gpu_workers",
    "is_loopback",
    "kubernetes_spec",
    "lifetime_fit",
    "load_cluster_config",
    "nanny_environ",
    "pool_lifetime",
    "preview",
    "refit",
    "register_worker_plugin",
    "require_extra",
    "slurm_pools",
    "start_failure",
    "tls_material",
    "tls_paths",
    "tls_secret",
    "tls_security",
    "with_lifetime",
]
