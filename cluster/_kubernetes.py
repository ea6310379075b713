"""Kubernetes through the dask-kubernetes operator: a `DaskCluster` whose default worker group is
the CPU pool (adaptive through the operator's `DaskAutoscaler`) and, when configured, a `gpu`
`DaskWorkerGroup` whose pods each hold one `nvidia.com/gpu` and run `--resources GPU=1`.

The resources are built with the operator's own `make_cluster_spec` / `make_worker_spec`;
`kubernetes_spec` needs no Kubernetes API, so the specs can be checked before a run.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed import Client

from slidemill.cluster._backend import (
    GPU_RESOURCE,
    PRE_SPAWN_ENVIRON_VAR,
    Backend,
    pre_spawn_literal,
    require_extra,
)
from slidemill.schemas import KubernetesClusterConfig, KubernetesCpuPool, KubernetesGpuPool

OPERATOR = "dask_kubernetes.operator"
GPU_GROUP = "gpu"
NVIDIA_GPU = "nvidia.com/gpu"


@dataclass(frozen=True, slots=True)
class KubernetesSpec:
    """The resources of one Kubernetes config."""

    cluster: dict[str, Any]
    """The `DaskCluster` resource (scheduler and default, CPU worker group)."""
    worker_groups: dict[str, dict[str, Any]]
    """Extra worker groups by name: the worker spec of each `DaskWorkerGroup`."""


def _worker_command(pool: KubernetesCpuPool | KubernetesGpuPool, gpu: bool) -> list[str]:
    # memory: the worker's default ("auto") is the pod's cgroup limit, one worker per pod
    command = ["dask", "worker", "--nthreads", str(pool.threads)]
    return [*command, "--resources", f"{GPU_RESOURCE}=1"] if gpu else command


def _env(
    config: KubernetesClusterConfig, pool: KubernetesCpuPool | KubernetesGpuPool
) -> dict[str, str]:
    nanny = config.nanny_env.environ(pool.threads)
    return {**config.env, **pool.env, PRE_SPAWN_ENVIRON_VAR: pre_spawn_literal(nanny)}


def _resources(pool: KubernetesCpuPool | KubernetesGpuPool, gpus: int = 0) -> dict[str, Any]:
    asked = {"cpu": pool.cpu_quantity, "memory": pool.memory}
    limits = {**asked, NVIDIA_GPU: str(gpus)} if gpus else dict(asked)
    return {"requests": asked, "limits": limits}


def _place(
    spec: dict[str, Any],
    config: KubernetesClusterConfig,
    pool: KubernetesCpuPool | KubernetesGpuPool,
) -> dict[str, Any]:
    """Add the node placement and the volumes the operator's spec helpers leave out."""
    pod = spec["spec"]
    if config.volumes:
        pod["volumes"] = [dict(v) for v in config.volumes]
        pod["containers"][0]["volumeMounts"] = [dict(m) for m in config.volume_mounts]
    if pool.node_selector:
        pod["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod["tolerations"] = [dict(t) for t in pool.tolerations]
    return spec


def _initial(pool: KubernetesCpuPool | KubernetesGpuPool) -> int:
    if pool.scale is not None:
        return pool.scale
    return pool.adapt.minimum if pool.adapt is not None else 0


def cluster_name(template: str) -> str:
    """The cluster name with `{user}` and `{uuid}` filled in, as dask-kubernetes does."""
    return template.format(user=getpass.getuser(), uuid=uuid.uuid4().hex[:10]).lower()


def kubernetes_spec(config: KubernetesClusterConfig, name: str | None = None) -> KubernetesSpec:
    """The `DaskCluster` and worker-group specs, built without a Kubernetes cluster."""
    operator = require_extra(OPERATOR, "kubernetes")
    cpu = config.cpu
    spec: dict[str, Any] = operator.make_cluster_spec(
        name=name or cluster_name(config.name),
        image=cpu.image or config.image,
        n_workers=_initial(cpu),
        resources=_resources(cpu),
        env=_env(config, cpu),
        worker_command=_worker_command(cpu, gpu=False),
        scheduler_service_type=config.scheduler_service_type,
        idle_timeout=config.idle_timeout,
    )
    if config.namespace:
        spec["metadata"]["namespace"] = config.namespace
    _place(spec["spec"]["worker"], config, cpu)
    # make_cluster_spec gives the scheduler the workers' resources and env; it needs its own
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler["image"] = config.image
    scheduler["args"] = ["dask", "scheduler", "--host", "0.0.0.0"]  # as the workers: `dask ...`
    scheduler["env"] = [{"name": k, "value": v} for k, v in config.env.items()]
    asked = {"cpu": config.scheduler_cpu, "memory": config.scheduler_memory}
    scheduler["resources"] = {"requests": asked, "limits": dict(asked)}
    groups: dict[str, dict[str, Any]] = {}
    if config.gpu is not None:
        gpu = config.gpu
        groups[GPU_GROUP] = _place(
            operator.make_worker_spec(
                image=gpu.image or config.image,
                n_workers=_initial(gpu),
                resources=_resources(gpu, gpus=gpu.gpus),
                env=_env(config, gpu),
                worker_command=_worker_command(gpu, gpu=True),
            ),
            config,
            gpu,
        )
    return KubernetesSpec(spec, groups)


@contextmanager
def open_kubernetes(config: KubernetesClusterConfig) -> Iterator[Client]:
    """Create the DaskCluster (and GPU worker group), turn on adaptivity for the CPU group when
    configured, and yield a client; on exit the cluster is deleted."""
    operator = require_extra(OPERATOR, "kubernetes")
    spec = kubernetes_spec(config)
    with operator.KubeCluster(
        custom_cluster_spec=spec.cluster, namespace=config.namespace, shutdown_on_close=True
    ) as cluster:
        # groups get their size at creation: `KubeCluster.scale` would delete the autoscaler
        for group, worker in spec.worker_groups.items():
            cluster.add_worker_group(group, custom_spec=worker)
        if config.cpu.adapt is not None:
            cluster.adapt(minimum=config.cpu.adapt.minimum, maximum=config.cpu.adapt.maximum)
        with Client(cluster) as client:
            yield client


KUBERNETES = Backend("kubernetes", KubernetesClusterConfig, open_kubernetes)
