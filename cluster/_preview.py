"""Show what a config would start, without starting any worker: for checking a config before a
run (`slidemill cluster check FILE`)."""

from __future__ import annotations

from typing import Any

import yaml

from slidemill.cluster._kubernetes import kubernetes_spec
from slidemill.cluster._slurm import slurm_pools
from slidemill.schemas import AnyClusterConfig, KubernetesClusterConfig, SlurmClusterConfig


def _worker_group(cluster: dict[str, Any], name: str, worker: dict[str, Any]) -> dict[str, Any]:
    """The `DaskWorkerGroup` resource, as `KubeCluster.add_worker_group` creates it."""
    metadata = {"name": f"{cluster['metadata']['name']}-{name}"}
    if "namespace" in cluster["metadata"]:
        metadata["namespace"] = cluster["metadata"]["namespace"]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": metadata,
        "spec": {"cluster": cluster["metadata"]["name"], "worker": worker},
    }


def preview(config: AnyClusterConfig) -> str:
    """SLURM: the pools' job scripts (dask-jobqueue's; the scheduler address is that of a
    scheduler started and stopped for the purpose). Kubernetes: the resources, as YAML. Other
    backends: the validated settings, defaults filled in, as YAML."""
    if isinstance(config, SlurmClusterConfig):
        with slurm_pools(config) as pools:
            parts = [f"# CPU pool: one job script per job\n{pools.cpu.job_script()}"]
            if pools.gpu is not None:
                parts.append(f"# GPU pool: one job script per job\n{pools.gpu.job_script()}")
        return "\n".join(parts)
    if isinstance(config, KubernetesClusterConfig):
        spec = kubernetes_spec(config)
        groups = [_worker_group(spec.cluster, n, w) for n, w in spec.worker_groups.items()]
        return str(yaml.safe_dump_all([spec.cluster, *groups], sort_keys=False))
    return str(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
