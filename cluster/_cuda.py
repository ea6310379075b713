"""A multi-GPU machine through dask-cuda's `LocalCUDACluster` (an optional extra, imported when
opened): one worker per GPU, each pinned to its device and declaring `GPU=1`, plus optional
CPU-only workers for reading and tiling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed import Client, Nanny

from slidemill.cluster._backend import GPU_RESOURCE, Backend, nanny_environ, require_extra
from slidemill.schemas import CudaClusterConfig

# What a CPU worker keeps of the GPU workers' options: how to reach and host it. The rest
# (device spill, RMM plugins, CUDA preloads, the GPU resource) is dask-cuda's, for GPU workers.
_SHARED_OPTIONS = (
    "host",
    "interface",
    "protocol",
    "security",
    "silence_logs",
    "services",
    "dashboard",
    "dashboard_address",
    "local_directory",
    "memory_limit",
    "nthreads",
)


def cpu_worker_specs(cluster: Any, n: int) -> dict[str, dict[str, Any]]:
    """`SpecCluster` worker specs of `n` CPU-only workers for the CUDA cluster `cluster`."""
    options = {k: v for k, v in cluster.new_spec["options"].items() if k in _SHARED_OPTIONS}
    options["env"] = {"CUDA_VISIBLE_DEVICES": ""}
    return {f"cpu-{i}": {"cls": Nanny, "options": dict(options)} for i in range(n)}


@contextmanager
def open_cuda(config: CudaClusterConfig) -> Iterator[Client]:
    """A LocalCUDACluster on this machine's GPUs (and CPU workers beside them)."""
    dask_cuda = require_extra("dask_cuda", "cuda")
    optional = {
        "CUDA_VISIBLE_DEVICES": config.devices,
        "memory_limit": config.memory_limit,
        "device_memory_limit": config.device_memory_limit,
        "local_directory": config.local_directory,
    }
    with (
        nanny_environ(config.nanny_env.environ(config.threads_per_worker)),
        dask_cuda.LocalCUDACluster(
            threads_per_worker=config.threads_per_worker,
            dashboard_address=config.dashboard_address,
            resources={GPU_RESOURCE: 1},
            **{k: v for k, v in optional.items() if v is not None},
        ) as cluster,
    ):
        n_gpu_workers = len(cluster.worker_spec)
        if config.cpu_workers:
            # SpecCluster runs whatever `worker_spec` lists; `scale` to the current size only
            # asks it to start the new entries (LocalCUDACluster never rescales by itself)
            cluster.worker_spec.update(cpu_worker_specs(cluster, config.cpu_workers))
            cluster.scale(len(cluster.worker_spec))
        with Client(cluster) as client:
            client.wait_for_workers(n_gpu_workers + config.cpu_workers)
            yield client


CUDA = Backend("cuda", CudaClusterConfig, open_cuda)
