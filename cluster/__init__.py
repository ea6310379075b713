"""Where work runs: a Dask cluster chosen by a validated config file.

Backends: the embedded LocalCluster (the default), an existing scheduler, SLURM (dask-jobqueue),
Kubernetes (the dask-kubernetes operator) and a multi-GPU node (dask-cuda). `connect` hands back
a `distributed.Client` either way; nothing else in slidemill knows which. CPU pools read and tile;
GPU pools declare a `GPU` resource and run inference.
"""

from cluster._backend import GPU_RESOURCE, Backend
from cluster._config import ClusterSettings, example_config, example_names, load_cluster_config
from cluster._connect import connect, gpu_workers
from cluster._kubernetes import KubernetesSpec, kubernetes_spec
from cluster._preview import preview
from cluster._registry import BACKENDS
from cluster._slurm import SlurmPools, slurm_pools
from cluster.errors import ClusterConfigError, ClusterError, MissingExtraError

__all__ = [
    "BACKENDS",
    "GPU_RESOURCE",
    "Backend",
    "ClusterConfigError",
    "ClusterError",
    "ClusterSettings",
    "KubernetesSpec",
    "MissingExtraError",
    "SlurmPools",
    "connect",
    "example_config",
    "example_names",
    "gpu_workers",
    "kubernetes_spec",
    "load_cluster_config",
    "preview",
    "slurm_pools",
]
