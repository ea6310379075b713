"""TLS for the Kubernetes backend: the spec that mounts the cluster's TLS Secret in every pod,
the Secret's certificates, and `open_kubernetes` against a stand-in for the Kubernetes API whose
"operator" runs the scheduler and worker containers exactly as the spec builds them, as real
processes on loopback with the Secret's files in a folder (there is no Kubernetes here)."""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from distributed.security import Security

from slidemill.cluster import (
    BACKENDS,
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
from slidemill.cluster.errors import ClusterConfigError
from slidemill.schemas import KubernetesClusterConfig, TlsFiles
from tests.helpers import free_port, refused, stop_groups

NAME = "slidemill-tls-test"
DEADLINE_S = 30.0
TLS_ARGS = ("--tls-ca-file", "--tls-cert", "--tls-key")


def _config(tls: TlsFiles | bool = True) -> KubernetesClusterConfig:
    return KubernetesClusterConfig.model_validate(
        {
            "backend": "kubernetes",
            "namespace": "pathology",
            "image": "img",
            "tls": tls,
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "volume_mounts": [{"name": "data", "mountPath": "/data"}],
            "cpu": {"memory": "4Gi", "adapt": {"minimum": 1, "maximum": 4}},
            "gpu": {"gpus": 1, "memory": "16Gi", "threads": 2, "scale": 1},
        }
    )


def _containers(spec: KubernetesSpec) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Pod spec and container of the scheduler, the default (CPU) and the GPU worker group."""
    pods = {
        "scheduler": spec.cluster["spec"]["scheduler"]["spec"],
        "cpu": spec.cluster["spec"]["worker"]["spec"],
        "gpu": spec.worker_groups["gpu"]["spec"],
    }
    return {role: (pod, pod["containers"][0]) for role, pod in pods.items()}


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or []}


def _write_pem(folder: Path, pem: Mapping[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in pem.items():
        (folder / key).write_text(text)
    return folder


def _secret_pem(secret: Mapping[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _cert_files(folder: Path, key_inside: bool = False) -> TlsFiles:
    """Certificate files as a lab would have them: one CA-signed certificate for every role."""
    role = Security.temporary().get_tls_config_for_role("client")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_text(role["ca_file"])
    if key_inside:
        (folder / "dask.pem").write_text(role["cert"] + role["key"])
        return TlsFiles(ca_file=folder / "ca.crt", cert_file=folder / "dask.pem")
    (folder / "dask.crt").write_text(role["cert"])
    (folder / "dask.key").write_text(role["key"])
    return TlsFiles(
        ca_file=folder / "ca.crt", cert_file=folder / "dask.crt", key_file=folder / "dask.key"
    )


# ---------------------------------------------------------------------------------------------
# the spec


@pytest.mark.parametrize("source", ["temporary", "files", "key-in-cert"])
def test_every_pod_mounts_the_tls_secret_and_speaks_tls(source: str, tmp_path: Path) -> None:
    tls: TlsFiles | bool = True
    if source != "temporary":
        tls = _cert_files(tmp_path / "certs", key_inside=source == "key-in-cert")
    spec = kubernetes_spec(_config(tls), name=NAME)
    assert spec.tls_secret == f"{NAME}-tls"
    paths = tls_paths()
    assert paths == {k: f"{TLS_MOUNT}/{k}" for k in (CA_PEM, CERT_PEM, KEY_PEM)}
    for role, (pod, container) in _containers(spec).items():
        assert {"name": TLS_VOLUME, "secret": {"secretName": f"{NAME}-tls"}} in pod["volumes"]
        mount = {"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True}
        assert mount in container["volumeMounts"], role
        args, env = container["args"], _env(container)
        for option, key in zip(TLS_ARGS, (CA_PEM, CERT_PEM, KEY_PEM), strict=True):
            assert args[args.index(option) + 1] == paths[key], (role, option)
        assert env[REQUIRE_ENCRYPTION_VAR] == "True", role
        if role == "scheduler":
            assert args[args.index("--protocol") + 1] == "tls"
            assert SCHEDULER_API_ROUTE in ast.literal_eval(env[HTTP_ROUTES_VAR])  # as dask reads it
            assert SCHEDULER_ADDRESS_VAR not in env
            # the operator's probes stay on the plain-HTTP dashboard port
            assert container["readinessProbe"]["httpGet"]["port"] == "http-dashboard"
        else:
            assert env[SCHEDULER_ADDRESS_VAR] == f"tls://{NAME}-scheduler:{SCHEDULER_PORT}"
            # the config's own volumes stay
            assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
            assert any(v["name"] == "data" for v in pod["volumes"])
    gpu_args = _containers(spec)["gpu"][1]["args"]
    assert gpu_args[gpu_args.index("--resources") + 1] == "GPU=1"

    material = tls_material(tls)
    assert material is not None
    secret = tls_secret(f"{NAME}-tls", "pathology", material.pem)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == f"{NAME}-tls"
    assert secret["metadata"]["namespace"] == "pathology"
    pem = _secret_pem(secret)
    assert set(pem) == {CA_PEM, CERT_PEM, KEY_PEM}
    assert "BEGIN CERTIFICATE" in pem[CA_PEM] and "BEGIN CERTIFICATE" in pem[CERT_PEM]
    assert "PRIVATE KEY" in pem[KEY_PEM]
    folder = _write_pem(tmp_path / "mounted", pem)
    # valid PEM: the CA loads, and the key belongs to the certificate
    context = ssl.create_default_context(cafile=str(folder / CA_PEM))
    context.load_cert_chain(str(folder / CERT_PEM), str(folder / KEY_PEM))
    if isinstance(tls, TlsFiles):
        assert pem[CA_PEM] == tls.ca_file.read_text()
        assert pem[CERT_PEM] == tls.cert_file.read_text()
        assert material.security.require_encryption


def test_tls_false_is_the_plain_spec_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="slidemill.cluster"):
        spec = kubernetes_spec(_config(False), name=NAME)
    assert spec.tls_secret is None
    assert tls_material(False) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Kubernetes" in w and "plain TCP (tls: false)" in w for w in warnings)
    for role, (pod, container) in _containers(spec).items():
        assert all(v["name"] != TLS_VOLUME for v in pod.get("volumes", [])), role
        assert all(m["name"] != TLS_VOLUME for m in container.get("volumeMounts", [])), role
        assert not set(TLS_ARGS) & set(container["args"]), role
        env = _env(container)
        assert not {REQUIRE_ENCRYPTION_VAR, HTTP_ROUTES_VAR, SCHEDULER_ADDRESS_VAR} & set(env)
    scheduler = _containers(spec)["scheduler"][1]
    assert scheduler["args"] == ["dask", "scheduler", "--host", "0.0.0.0"]


def test_tls_is_the_default_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    config = KubernetesClusterConfig.model_validate(
        {"backend": "kubernetes", "image": "img", "cpu": {"memory": "4Gi", "scale": 1}}
    )
    assert config.tls is True
    assert kubernetes_spec(config).tls_secret is not None
    missing = TlsFiles(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "cert.pem")
    with pytest.raises(ClusterConfigError, match=r"Kubernetes cluster: tls: no certificate file"):
        tls_material(missing)


# ---------------------------------------------------------------------------------------------
# the spec's commands as real processes


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _expand(args: list[str], env: Mapping[str, str]) -> list[str]:
    """`$(VAR)` in a container's args, as Kubernetes substitutes it from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def _replace(args: list[str], option: str, value: str) -> list[str]:
    i = args.index(option)
    return [*args[: i + 1], value, *args[i + 2 :]]


class Pods:
    """Containers of the spec as local processes, each in its own process group."""

    def __init__(self, folder: Path, mounted: Path) -> None:
        self.folder, self.mounted = folder, mounted
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, container: Mapping[str, Any], extra_env: Mapping[str, str]) -> None:
        # only the Secret's mount path moves, to the folder holding its files
        env = {k: v.replace(TLS_MOUNT, str(self.mounted)) for k, v in _env(container).items()}
        env.update(extra_env)
        args = [a.replace(TLS_MOUNT, str(self.mounted)) for a in _expand(container["args"], env)]
        assert args[0] == "dask", args
        command = [sys.executable, "-m", f"distributed.cli.dask_{args[1]}", *args[2:]]
        with (self.folder / f"{name}.log").open("wb") as log:
            self.procs.append(
                subprocess.Popen(
                    command,
                    env={**os.environ, **env},
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
            )

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.folder.glob("*.log")))

    def close(self) -> None:
        stop_groups(self.procs)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    (tmp_path / "logs").mkdir()
    running = Pods(tmp_path / "logs", tmp_path / "etc-slidemill-tls")
    try:
        yield running
    finally:
        running.close()


class FakeKubernetes:
    """The few kr8s calls the TLS path makes, answered without Kubernetes; its "operator" starts
    each created resource's containers as real processes on loopback (`Pods`). What Kubernetes
    itself would provide is emulated: the Secret's files in a folder instead of the mount, the
    Service's name resolving to the scheduler's loopback port, and the operator's worker name."""

    def __init__(self, pods: Pods) -> None:
        self.pods = pods
        self.namespace = "pathology"
        self.port, self.dashboard = free_port(), free_port()
        self.created: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        self.owners: dict[str, str] = {}
        self.resources: dict[str, dict[str, Any]] = {}
        self.scheduler_started = False

    # kr8s
    def api(self) -> FakeKubernetes:
        return self

    def get(self, kind: str, *names: str, namespace: str, **selectors: Any) -> Iterator[Any]:
        assert namespace == self.namespace
        if kind == "pods" and self.scheduler_started:
            yield _FakePod(f"http://127.0.0.1:{self.dashboard}/health")
        if kind == "services":
            yield _FakeService(self.port)

    # kr8s.objects
    def Secret(self, resource: dict[str, Any], namespace: str) -> _FakeResource:  # noqa: N802
        return _FakeResource(self, resource, namespace)

    def new_class(self, kind: str, version: str) -> Callable[..., _FakeResource]:
        def make(resource: dict[str, Any], namespace: str) -> _FakeResource:
            assert resource["kind"] == kind and resource["apiVersion"] == version
            return _FakeResource(self, resource, namespace)

        return make

    def operate(self, resource: dict[str, Any]) -> None:
        """What the operator and the kubelet do with a created resource."""
        kind, spec = resource["kind"], resource.get("spec", {})
        if kind == "Secret":
            _write_pem(self.pods.mounted, _secret_pem(resource))
        elif kind == "DaskCluster":
            scheduler = dict(spec["scheduler"]["spec"]["containers"][0])
            args = _replace(scheduler["args"], "--host", "127.0.0.1")  # not every interface
            scheduler["args"] = [
                *args, "--port", str(self.port), "--dashboard-address", f":{self.dashboard}"
            ]  # fmt: skip
            self.pods.start("scheduler", scheduler, {})
            self.scheduler_started = True
            self._worker("default", spec["worker"])
        elif kind == "DaskWorkerGroup":
            self._worker(resource["metadata"]["name"], spec["worker"])

    def _worker(self, group: str, worker: dict[str, Any]) -> None:
        container = dict(worker["spec"]["containers"][0])
        # the pod's own dashboard port, free on this machine
        container["args"] = _replace(container["args"], "--dashboard-address", str(free_port()))
        address = _env(container)[SCHEDULER_ADDRESS_VAR]
        assert address.startswith("tls://") and address.endswith(f"-scheduler:{SCHEDULER_PORT}")
        resolved = {
            SCHEDULER_ADDRESS_VAR: f"tls://127.0.0.1:{self.port}",
            "DASK_WORKER_NAME": f"{group}-worker-0",
        }
        self.pods.start(group, container, resolved)


class _FakeResource:
    def __init__(self, api: FakeKubernetes, resource: dict[str, Any], namespace: str) -> None:
        self.api, self.raw, self.namespace = api, resource, namespace
        self.kind, self.name = resource["kind"], resource["metadata"]["name"]

    def create(self) -> None:
        assert self.namespace == self.api.namespace
        self.api.created.append((self.kind, self.name))
        self.api.resources[self.kind] = self.raw
        self.api.operate(self.raw)

    def adopt(self, child: _FakeResource) -> None:
        self.api.owners[child.name] = f"{self.kind}/{self.name}"

    def delete(self) -> None:
        self.api.deleted.append((self.kind, self.name))


class _FakePod:
    name = "scheduler"
    status: ClassVar[dict[str, Any]] = {"phase": "Running"}

    def __init__(self, health: str) -> None:
        self.health = health

    def ready(self) -> bool:
        """The scheduler container's readiness probe: GET /health on the dashboard port."""
        try:
            with urllib.request.urlopen(self.health, timeout=1) as response:
                return bool(response.read() == b"ok")
        except OSError:
            return False


class _FakeService:
    def __init__(self, port: int) -> None:
        self.port = port

    @contextlib.contextmanager
    def portforward(self, remote_port: int, local_port: str) -> Iterator[int]:
        assert remote_port == SCHEDULER_PORT
        yield self.port


def test_open_kubernetes_runs_the_specs_commands_as_a_tls_cluster(
    pods: Pods, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeKubernetes(pods)
    for module in ("kr8s", "kr8s.objects"):  # what the backend imports to reach the API
        monkeypatch.setitem(sys.modules, module, fake)
    real_getaddrinfo = socket.getaddrinfo

    def outside_the_cluster(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(f".{fake.namespace}"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", outside_the_cluster)

    config = _config(True)
    try:
        with BACKENDS["kubernetes"].open(config) as client:
            name = fake.resources["DaskCluster"]["metadata"]["name"]
            assert fake.created == [
                ("Secret", f"{name}-tls"),  # before the pods that mount it
                ("DaskCluster", name),
                ("DaskWorkerGroup", f"{name}-gpu"),
                ("DaskAutoscaler", name),
            ]
            assert fake.owners == {f"{name}-tls": f"DaskCluster/{name}"}
            assert fake.resources["DaskAutoscaler"]["spec"] == {
                "cluster": name, "minimum": 1, "maximum": 4
            }  # fmt: skip
            address = client.scheduler_info(n_workers=0)["address"]
            assert address == f"tls://127.0.0.1:{fake.port}"
            client.wait_for_workers(2, timeout=DEADLINE_S)
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert all(a.startswith("tls://") for a in workers), workers
            names = {w["name"] for w in workers.values()}
            assert names == {"default-worker-0", f"{name}-gpu-worker-0"}
            assert client.submit(sum, [1, 2], pure=False).result() == 3
            on_gpu = client.submit(sum, [3, 4], resources={"GPU": 1}, pure=False)
            assert on_gpu.result() == 7
            gpu_worker = client.who_has(on_gpu)[on_gpu.key][0]
            assert workers[gpu_worker]["name"] == f"{name}-gpu-worker-0"

            # the operator's probes and autoscaler: plain HTTP on the dashboard port
            base = f"http://127.0.0.1:{fake.dashboard}"
            with urllib.request.urlopen(f"{base}/api/v1/adaptive_target", timeout=5) as target:
                assert "workers" in json.loads(target.read())

            # nobody without the run's certificate gets in; the same probe lets the run's in
            assert not refused(address, **client.security.get_connection_args("client"))
            assert refused(f"tcp://127.0.0.1:{fake.port}")
            no_cert = ssl.create_default_context(cafile=str(pods.mounted / CA_PEM))
            no_cert.check_hostname = False
            assert refused(address, ssl_context=no_cert)
            stranger = Security.temporary().get_connection_args("client")
            assert refused(address, **stranger)
    except Exception:
        print(pods.logs())
        raise
    assert set(fake.deleted) == {("DaskCluster", name), ("Secret", f"{name}-tls")}
