"""Kubernetes through the dask-kubernetes operator: a `DaskCluster` whose default worker group is
the CPU pool (adaptive through the operator's `DaskAutoscaler`) and, when configured, a `gpu`
`DaskWorkerGroup` whose pods each hold one `nvidia.com/gpu` and run `--resources GPU=1`.

The resources are built with the operator's own `make_cluster_spec` / `make_worker_spec`;
`kubernetes_spec` needs no Kubernetes API, so the specs can be checked before a run.

Scheduler and workers speak TLS unless the config says `tls: false`. The certificates (made for
the run, or the config's files) reach the pods in a Secret, `<cluster>-tls`, mounted read-only at
`TLS_MOUNT` and owned by the DaskCluster, so Kubernetes deletes it with the cluster.
`KubeCluster` reaches its scheduler over plain tcp:// only (it cannot pass a `Security`), so with
TLS slidemill creates the resources itself and connects its own client. The operator's probes
and its autoscaler use the scheduler's HTTP port, which stays plain HTTP (`tls_spec`).
"""

from __future__ import annotations

import base64
import getpass
import logging
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import dask.config
from distributed import Client
from distributed.security import Security

from slidemill.cluster._backend import (
    GPU_RESOURCE,
    PRE_SPAWN_ENVIRON_VAR,
    Backend,
    pre_spawn_literal,
    require_extra,
)
from slidemill.cluster._security import PLAIN_TCP_WARNING, tls_security
from slidemill.cluster.errors import PoolStartError
from slidemill.schemas import (
    KubernetesClusterConfig,
    KubernetesCpuPool,
    KubernetesGpuPool,
    TlsFiles,
)

log = logging.getLogger(__name__)

OPERATOR = "dask_kubernetes.operator"
DASK_API = "kubernetes.dask.org/v1"
GPU_GROUP = "gpu"
NVIDIA_GPU = "nvidia.com/gpu"
WHERE = "the Kubernetes cluster"

SCHEDULER_PORT = 8786
"""The scheduler's comm port, as the operator's scheduler Service names it (`tcp-comm`)."""
TLS_VOLUME = "slidemill-tls"
TLS_MOUNT = "/etc/slidemill/tls"
"""Where every scheduler and worker container mounts the TLS Secret, read-only."""
CA_PEM, CERT_PEM, KEY_PEM = "ca.pem", "cert.pem", "key.pem"
"""The TLS Secret's keys: the CA, the certificate every role presents, and its key."""
SCHEDULER_API_ROUTE = "distributed.http.scheduler.api"
"""The scheduler's HTTP API (adaptive target, retire workers, idle check). The operator asks it
first and falls back to a plain-tcp:// RPC that a TLS scheduler refuses, so with TLS it must be
served for the autoscaler to scale."""
REQUIRE_ENCRYPTION_VAR = "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"
HTTP_ROUTES_VAR = "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"
SCHEDULER_ADDRESS_VAR = "DASK_SCHEDULER_ADDRESS"


@dataclass(frozen=True, slots=True)
class KubernetesSpec:
    """The resources of one Kubernetes config."""

    cluster: dict[str, Any]
    """The `DaskCluster` resource (scheduler and default, CPU worker group)."""
    worker_groups: dict[str, dict[str, Any]]
    """Extra worker groups by name: the worker spec of each `DaskWorkerGroup`."""
    tls_secret: str | None = None
    """The Secret every pod mounts at `TLS_MOUNT`; None: plain TCP."""


def tls_secret_name(cluster: str) -> str:
    """The name of the cluster's TLS Secret."""
    return f"{cluster}-tls"


def tls_paths(mount: str = TLS_MOUNT) -> dict[str, str]:
    """The CA, certificate and key files inside a container, by Secret key."""
    return {key: f"{mount}/{key}" for key in (CA_PEM, CERT_PEM, KEY_PEM)}


def _tls_args(paths: Mapping[str, str]) -> list[str]:
    return [
        *("--tls-ca-file", paths[CA_PEM]),
        *("--tls-cert", paths[CERT_PEM]),
        *("--tls-key", paths[KEY_PEM]),
    ]


def _set_env(container: dict[str, Any], **values: str) -> None:
    env = [e for e in container.get("env") or [] if e["name"] not in values]
    container["env"] = [*env, *({"name": k, "value": v} for k, v in values.items())]


def _mount_secret(pod: dict[str, Any], secret: str) -> None:
    pod["volumes"] = [
        *pod.get("volumes", []),
        {"name": TLS_VOLUME, "secret": {"secretName": secret}},
    ]
    container = pod["containers"][0]
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True},
    ]


def tls_spec(spec: dict[str, Any], groups: Mapping[str, dict[str, Any]], secret: str) -> None:
    """Turn a plain DaskCluster spec and its worker groups into TLS ones, in place: every pod
    mounts `secret`; the scheduler listens on tls:// only and requires client certificates;
    the workers join tls:// with theirs. The operator's probes and autoscaler use the
    scheduler's dashboard port, which the comm TLS settings leave plain HTTP; its HTTP API is
    served there because the autoscaler's RPC fallback speaks plain tcp://."""
    name = spec["metadata"]["name"]
    paths = tls_paths()
    scheduler_pod = spec["spec"]["scheduler"]["spec"]
    _mount_secret(scheduler_pod, secret)
    scheduler = scheduler_pod["containers"][0]
    scheduler["args"] = [*scheduler["args"], "--protocol", "tls", *_tls_args(paths)]
    routes = list(dask.config.get("distributed.scheduler.http.routes"))
    _set_env(
        scheduler,
        **{
            REQUIRE_ENCRYPTION_VAR: "True",
            HTTP_ROUTES_VAR: repr([*routes, SCHEDULER_API_ROUTE]),
        },
    )
    # the operator would set tcp://; the Service's short name resolves in the pods' namespace
    address = f"tls://{name}-scheduler:{SCHEDULER_PORT}"
    for worker in (spec["spec"]["worker"], *groups.values()):
        _mount_secret(worker["spec"], secret)
        container = worker["spec"]["containers"][0]
        container["args"] = [*container["args"], *_tls_args(paths)]
        _set_env(container, **{REQUIRE_ENCRYPTION_VAR: "True", SCHEDULER_ADDRESS_VAR: address})


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The certificates of a run: the client's `Security` and the Secret's PEM texts."""

    security: Security
    pem: dict[str, str]
    """PEM text by Secret key (`CA_PEM`, `CERT_PEM`, `KEY_PEM`)."""


def tls_material(tls: TlsFiles | bool) -> TlsMaterial | None:
    """Certificates for `tls:`: made for the run (True) or read from the config's files; None
    for plain TCP (False)."""
    if tls is False:
        return None
    security = tls_security(tls, WHERE)
    assert security is not None  # only False gives plain TCP
    if isinstance(tls, TlsFiles):
        key_file = tls.key_file or tls.cert_file  # a key inside the certificate file
        files = {CA_PEM: tls.ca_file, CERT_PEM: tls.cert_file, KEY_PEM: key_file}
        pem = {key: path.read_text() for key, path in files.items()}
    else:  # temporary certificates hold PEM text, not paths; one certificate for every role
        role = security.get_tls_config_for_role("worker")
        pem = {CA_PEM: role["ca_file"], CERT_PEM: role["cert"], KEY_PEM: role["key"]}
    return TlsMaterial(security, pem)


def tls_secret(name: str, namespace: str | None, pem: Mapping[str, str]) -> dict[str, Any]:
    """The Secret resource holding the run's certificates."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "slidemill"}}
    if namespace:
        metadata["namespace"] = namespace
    data = {key: base64.b64encode(text.encode()).decode() for key, text in pem.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": data,
    }


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
    """The `DaskCluster` and worker-group specs, built without a Kubernetes cluster; with TLS
    their pods mount the cluster's TLS Secret (`tls_secret_name`), which holds no data yet."""
    operator = require_extra(OPERATOR, "kubernetes")
    cpu = config.cpu
    name = name or cluster_name(config.name)
    spec: dict[str, Any] = operator.make_cluster_spec(
        name=name,
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
    if config.tls is False:
        log.warning(PLAIN_TCP_WARNING, WHERE)
        return KubernetesSpec(spec, groups)
    secret = tls_secret_name(name)
    tls_spec(spec, groups, secret)
    return KubernetesSpec(spec, groups, secret)


def worker_group(cluster: str, group: str, worker: dict[str, Any]) -> dict[str, Any]:
    """The `DaskWorkerGroup` resource of an extra worker group."""
    return {
        "apiVersion": DASK_API,
        "kind": "DaskWorkerGroup",
        "metadata": {"name": f"{cluster}-{group}"},
        "spec": {"cluster": cluster, "worker": worker},
    }


def autoscaler(cluster: str, minimum: int, maximum: int) -> dict[str, Any]:
    """The `DaskAutoscaler` resource that adapts the default (CPU) worker group."""
    return {
        "apiVersion": DASK_API,
        "kind": "DaskAutoscaler",
        "metadata": {"name": cluster},
        "spec": {"cluster": cluster, "minimum": minimum, "maximum": maximum},
    }


SCHEDULER_START_TIMEOUT = 900.0
"""Seconds the scheduler pod may take to become ready (image pull included)."""
_FATAL_WAITS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}
)
"""Container waiting reasons that do not resolve by waiting longer."""


def _wait_for_scheduler(kr8s: Any, name: str, namespace: str) -> None:
    """Return once the scheduler pod is ready (its readiness probe is the dashboard's /health);
    raise `PoolStartError` when it cannot start."""
    selector = {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    deadline = time.monotonic() + SCHEDULER_START_TIMEOUT
    state = "no scheduler pod yet"
    while time.monotonic() < deadline:
        for pod in kr8s.get("pods", namespace=namespace, label_selector=selector):
            if pod.ready():
                return
            state = f"pod {pod.name} is {pod.status.get('phase', 'Pending')}"
            for container in pod.status.get("containerStatuses", []):
                waiting = container.get("state", {}).get("waiting", {})
                if waiting.get("reason") in _FATAL_WAITS:
                    raise PoolStartError(
                        f"{WHERE} {name}: scheduler pod {pod.name}: {waiting['reason']}: "
                        f"{waiting.get('message', '')}".rstrip(": ")
                    )
        time.sleep(1.0)
    raise PoolStartError(f"{WHERE} {name}: the scheduler did not become ready ({state})")


@contextmanager
def _scheduler_address(kr8s: Any, name: str, namespace: str) -> Iterator[str]:
    """The scheduler's tls:// address: the Service's name inside the cluster, else a port
    forward to it for as long as the context lasts (TLS passes through it untouched)."""
    service = f"{name}-scheduler"
    _wait_for_scheduler(kr8s, name, namespace)
    host = f"{service}.{namespace}"
    try:
        socket.getaddrinfo(host, SCHEDULER_PORT)
    except OSError:  # outside the cluster, where its Service names do not resolve
        pass
    else:
        yield f"tls://{host}:{SCHEDULER_PORT}"
        return
    (svc,) = kr8s.get("services", service, namespace=namespace)
    with svc.portforward(SCHEDULER_PORT, local_port="auto") as port:
        yield f"tls://127.0.0.1:{port}"


def _delete(resource: Any) -> None:
    with suppress(Exception):  # already gone, or the API is unreachable: nothing more to do
        resource.delete()


@contextmanager
def _tls_cluster(
    config: KubernetesClusterConfig, spec: KubernetesSpec, material: TlsMaterial
) -> Iterator[str]:
    """Create the TLS Secret and the operator's resources; yield the scheduler's address; on
    exit delete the cluster (its worker groups, autoscaler and Secret go with it)."""
    kr8s = require_extra("kr8s", "kubernetes")
    objects = require_extra("kr8s.objects", "kubernetes")
    namespace = config.namespace or kr8s.api().namespace
    name = spec.cluster["metadata"]["name"]
    assert spec.tls_secret is not None
    with ExitStack() as stack:
        # the pods mount the Secret at start, so it exists before the cluster does
        secret = objects.Secret(
            tls_secret(spec.tls_secret, namespace, material.pem), namespace=namespace
        )
        secret.create()
        stack.callback(_delete, secret)
        cluster = objects.new_class("DaskCluster", DASK_API)(spec.cluster, namespace=namespace)
        cluster.create()
        stack.callback(_delete, cluster)
        cluster.adopt(secret)  # deleted with the cluster even when this process is killed
        group_class = objects.new_class("DaskWorkerGroup", DASK_API)
        for group, worker in spec.worker_groups.items():
            group_class(worker_group(name, group, worker), namespace=namespace).create()
        if config.cpu.adapt is not None:
            adapt = config.cpu.adapt
            scaler = autoscaler(name, adapt.minimum, adapt.maximum)
            objects.new_class("DaskAutoscaler", DASK_API)(scaler, namespace=namespace).create()
        yield stack.enter_context(_scheduler_address(kr8s, name, namespace))


@contextmanager
def open_kubernetes(config: KubernetesClusterConfig) -> Iterator[Client]:
    """Create the DaskCluster (and GPU worker group), turn on adaptivity for the CPU group when
    configured, and yield a client; on exit the cluster is deleted."""
    operator = require_extra(OPERATOR, "kubernetes")
    spec = kubernetes_spec(config)
    material = tls_material(config.tls)
    if material is not None:
        with (
            _tls_cluster(config, spec, material) as address,
            Client(address, security=material.security) as client,
        ):
            yield client
        return
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
