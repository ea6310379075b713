"""Cluster backends chosen by a validated config file: the shipped examples, the error messages,
the SLURM job scripts and Kubernetes specs (built with dask-jobqueue and dask-kubernetes, nothing
submitted to a real batch system), and real LocalClusters for the local, existing and CUDA paths.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import dask.config
import pytest
import yaml
from distributed import Client, LocalCluster
from distributed.core import Status

from slidemill.cluster import (
    BACKENDS,
    CUDA_WORKER,
    PRE_SPAWN_ENVIRON,
    PRE_SPAWN_ENVIRON_VAR,
    ClusterConfigError,
    ClusterSettings,
    MissingExtraError,
    QueuedJob,
    connect,
    container_python,
    cpu_job_kwargs,
    example_config,
    example_names,
    gpu_job_kwargs,
    gpu_workers,
    kubernetes_spec,
    load_cluster_config,
    preview,
    slurm_pools,
    start_failure,
)
from slidemill.schemas import (
    BACKEND_NAMES,
    Adapt,
    ClusterConfig,
    CudaClusterConfig,
    ExistingClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
    SlurmClusterConfig,
    SlurmContainer,
    TlsFiles,
    image_tag,
    slidemill_version,
    write_json_schemas,
)

NANNY_VARS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


@pytest.fixture
def clean_environ() -> Iterator[None]:
    """No nanny variables inherited from the test process (they would win over the config), and
    the environment restored afterwards: a nanny writes its pre-spawn variables into the process
    that runs it, here the test process."""
    saved = dict(os.environ)
    for name in (*NANNY_VARS, "SLIDEMILL_PROBE"):
        os.environ.pop(name, None)
    for name in [n for n in os.environ if n.upper().startswith("SLIDEMILL_")]:
        os.environ.pop(name)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _write(tmp_path: Path, data: dict[str, Any], name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _pre_spawn_environ(export_value: str) -> dict[str, Any]:
    """What dask in a job reads from the exported variable, as `pre-spawn-environ`."""
    cfg = dask.config.update(
        dask.config.collect_env({}),  # the defaults are not needed: only our keys matter
        dask.config.collect_env({PRE_SPAWN_ENVIRON_VAR: export_value}),
    )
    return dask.config.get(PRE_SPAWN_ENVIRON, config=cfg)


# ---------------------------------------------------------------------------------------------
# configs


def test_every_example_config_validates_and_names_a_registered_backend(
    clean_environ: None,
) -> None:
    assert set(example_names()) == set(BACKEND_NAMES) == set(BACKENDS)
    for name in example_names():
        config = load_cluster_config(example_config(name))
        assert config.backend == name
        assert isinstance(config, BACKENDS[name].config_type)
        again = ClusterConfig.model_validate(config.model_dump(mode="json")).root
        assert again == config
    slurm = load_cluster_config(example_config("slurm"))
    assert isinstance(slurm, SlurmClusterConfig) and slurm.gpu is not None
    assert slurm.cpu.adapt is not None and slurm.cpu.adapt.maximum == 20
    assert slurm.gpu_pool and not load_cluster_config(example_config("local")).gpu_pool


def test_cluster_config_is_exported_as_json_schema(tmp_path: Path) -> None:
    write_json_schemas(tmp_path)
    schema = json.loads((tmp_path / "cluster_config.schema.json").read_text())
    assert set(schema["discriminator"]["mapping"]) == set(BACKEND_NAMES)
    slurm = schema["$defs"]["SlurmClusterConfig"]
    assert set(slurm["required"]) == {"backend", "cpu"}
    props = schema["$defs"]["NannyEnv"]["properties"]
    assert props["malloc_trim_threshold"]["default"] == props["malloc_mmap_threshold"]["default"]
    assert props["malloc_mmap_threshold"]["default"] == 256 * 2**20


def test_toml_and_yaml_files_give_the_same_config(tmp_path: Path, clean_environ: None) -> None:
    (tmp_path / "c.toml").write_text(
        'backend = "slurm"\naccount = "lab"\n'
        '[cpu]\npartition = "short"\ncores = 4\nmemory = "16GiB"\nscale = 2\n'
        '[gpu]\nqueue = "gpu"\ncores = 4\nmemory = "32GiB"\ngpus = 1\nscale = 1\n'
    )
    yaml_path = _write(
        tmp_path,
        {
            "backend": "slurm",
            "account": "lab",
            "cpu": {"partition": "short", "cores": 4, "memory": "16GiB", "scale": 2},
            "gpu": {"partition": "gpu", "cores": 4, "memory": "32GiB", "gpus": 1, "scale": 1},
        },
    )
    from_toml = load_cluster_config(tmp_path / "c.toml")
    assert from_toml == load_cluster_config(yaml_path)
    assert isinstance(from_toml, SlurmClusterConfig) and from_toml.gpu is not None
    assert from_toml.gpu.partition == "gpu"  # `queue` is read as `partition`


def test_the_environment_overrides_the_file_and_arguments_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_environ: None
) -> None:
    monkeypatch.setenv("SLIDEMILL_CLUSTER_FILE", str(example_config("slurm")))
    monkeypatch.setenv("SLIDEMILL_CLUSTER__ACCOUNT", "other-lab")
    monkeypatch.setenv("SLIDEMILL_CLUSTER__CPU__ADAPT__MAXIMUM", "7")
    monkeypatch.setenv("SLIDEMILL_CLUSTER__CPU__JOB_EXTRA_DIRECTIVES", '["--qos=high"]')
    config = load_cluster_config()
    assert isinstance(config, SlurmClusterConfig)
    assert config.account == "other-lab"
    assert config.cpu.adapt is not None
    assert (config.cpu.adapt.minimum, config.cpu.adapt.maximum) == (0, 7)
    assert config.cpu.job_extra_directives == ["--qos=high"]
    assert config.cpu.partition == "cpu"  # the rest comes from the file
    # an explicit path (a flag) beats SLIDEMILL_CLUSTER_FILE; env overrides still apply on top
    local = _write(tmp_path, {"backend": "local", "n_workers": 4})
    monkeypatch.delenv("SLIDEMILL_CLUSTER__ACCOUNT")
    monkeypatch.delenv("SLIDEMILL_CLUSTER__CPU__ADAPT__MAXIMUM")
    monkeypatch.delenv("SLIDEMILL_CLUSTER__CPU__JOB_EXTRA_DIRECTIVES")
    monkeypatch.setenv("SLIDEMILL_N_WORKERS", "3")
    assert load_cluster_config(local) == LocalClusterConfig(n_workers=3)
    assert load_cluster_config(local, n_workers=2) == LocalClusterConfig(n_workers=2)
    # arguments left as None are flags not given: they do not mask the environment
    assert ClusterSettings(scheduler=None, n_workers=None, cluster_file=local).cluster == (
        LocalClusterConfig(n_workers=3)
    )


def test_shortcuts_choose_a_backend_and_conflicts_are_refused(
    monkeypatch: pytest.MonkeyPatch, clean_environ: None
) -> None:
    assert load_cluster_config() == LocalClusterConfig()
    assert load_cluster_config(scheduler="tcp://10.0.0.5:8786") == ExistingClusterConfig(
        backend="existing", scheduler="tcp://10.0.0.5:8786"
    )
    monkeypatch.setenv("SLIDEMILL_SCHEDULER", "tcp://10.0.0.6:8786")
    existing = load_cluster_config()
    assert isinstance(existing, ExistingClusterConfig)
    assert existing.scheduler == "tcp://10.0.0.6:8786"
    with pytest.raises(ClusterConfigError, match=r"slurm\.yaml: .*scheduler address .* both"):
        load_cluster_config(example_config("slurm"))
    monkeypatch.delenv("SLIDEMILL_SCHEDULER")
    with pytest.raises(ClusterConfigError, match=r"n_workers \(--workers.*not 'slurm'"):
        load_cluster_config(example_config("slurm"), n_workers=4)


_SLURM_CPU: dict[str, Any] = {"cores": 4, "memory": "16GiB", "scale": 1}
_SLURM: dict[str, Any] = {"backend": "slurm", "cpu": _SLURM_CPU}
_K8S: dict[str, Any] = {
    "backend": "kubernetes",
    "image": "img",
    "cpu": {"memory": "4Gi", "scale": 1},
}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {
                **_SLURM,
                "cpu": {**_SLURM_CPU, "scale": None, "adapt": {"minimum": 5, "maximum": 2}},
            },
            r"slurm\.cpu\.adapt: adapt minimum \(5\) is larger than adapt maximum \(2\)",
        ),
        (
            {**_SLURM, "gpu": {"cores": 4, "memory": "16GiB", "scale": 1}},
            r"slurm\.gpu\.gpus: Field required",
        ),
        (
            {**_SLURM, "gpu": {"cores": 4, "memory": "16GiB", "scale": 1, "gpus": 0}},
            r"slurm\.gpu\.gpus: a GPU pool needs gpus >= 1 per job \(got 0\)",
        ),
        (
            {**_SLURM, "gpu": {"cores": 4, "memory": "16G", "gpus": 1, "adapt": {"maximum": 4}}},
            r"slurm\.gpu: a GPU pool has a fixed size \(scale: N jobs\); only the CPU pool adapts",
        ),
        (
            {**_SLURM, "gpu": {"cores": 6, "memory": "16G", "gpus": 4, "scale": 1}},
            r"slurm\.gpu: cores \(6\) must be a multiple of gpus \(4\)",
        ),
        (
            {**_SLURM, "cpu": {"cores": 4, "memory": "16GiB"}},
            r"slurm\.cpu: give either scale .* or adapt",
        ),
        (
            {**_SLURM, "cpu": {**_SLURM_CPU, "walltime": "4h"}},
            r"slurm\.cpu\.walltime: '4h' is not a SLURM time",
        ),
        (
            {**_SLURM, "cpu": {**_SLURM_CPU, "memory": "lots"}},
            r"slurm\.cpu\.memory: 'lots' is not a memory size",
        ),
        ({**_SLURM, "acount": "lab"}, r"slurm\.acount: Extra inputs are not permitted"),
        ({"backend": "pbs"}, r"tag 'pbs' .* expected tags: 'local', 'existing', 'slurm'"),
        ({"backend": "existing"}, r"existing: give exactly one of scheduler .* or scheduler_file"),
        (
            {"backend": "existing", "scheduler": "10.0.0.5:8786"},
            r"needs a protocol, e\.g\. tcp://10\.0\.0\.5:8786",
        ),
        (
            {**_K8S, "gpu": {"gpus": 2, "memory": "8Gi", "scale": 1}},
            r"kubernetes\.gpu: gpus: 2: one GPU per worker pod",
        ),
        (
            {**_K8S, "volume_mounts": [{"name": "data", "mountPath": "/data"}]},
            r"kubernetes: volume_mounts name volumes not listed in volumes: data",
        ),
        ({"backend": "cuda", "devices": []}, r"cuda\.devices: devices is empty"),
        (
            {"backend": "local", "nanny_env": {"extra": {"BAD NAME": "1"}}},
            r"local\.nanny_env\.extra: not environment variable names: 'BAD NAME'",
        ),
    ],
)
def test_invalid_configs_say_where_and_what(
    tmp_path: Path, clean_environ: None, data: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ClusterConfigError, match=message) as caught:
        load_cluster_config(path)
    assert str(caught.value).startswith(f"{path}: invalid cluster config: ")
    assert "\n" not in str(caught.value)


def test_unreadable_files_say_why(tmp_path: Path, clean_environ: None) -> None:
    with pytest.raises(ClusterConfigError, match=r"cannot read the cluster config"):
        load_cluster_config(tmp_path / "missing.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ClusterConfigError, match=r"c\.json: a cluster config must be .yaml"):
        load_cluster_config(tmp_path / "c.json")
    (tmp_path / "bad.yaml").write_text("backend: [local\n")
    with pytest.raises(ClusterConfigError, match=r"bad\.yaml: not valid YAML"):
        load_cluster_config(tmp_path / "bad.yaml")
    with pytest.raises(
        ClusterConfigError, match=r"no example cluster config 'pbs'; there are: cuda"
    ):
        example_config("pbs")
    (tmp_path / "nobackend.toml").write_text("n_workers = 2\n")
    with pytest.raises(ClusterConfigError, match=r"no `backend:`; choose one of local, existing"):
        load_cluster_config(tmp_path / "nobackend.toml")


def test_a_missing_optional_backend_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # makes `import dask_cuda` fail
    with (
        pytest.raises(MissingExtraError, match=r"pip install 'slidemill\[cuda\]'"),
        connect(CudaClusterConfig(backend="cuda")),
    ):
        pass


# ---------------------------------------------------------------------------------------------
# SLURM: dask-jobqueue's own job scripts


@pytest.fixture
def slurm_example(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_environ: None
) -> SlurmClusterConfig:
    """The shipped SLURM example, on loopback (no ib0 here) and logging into tmp_path."""
    monkeypatch.setenv("SLIDEMILL_CLUSTER__INTERFACE", "lo")
    monkeypatch.setenv("SLIDEMILL_CLUSTER__DASHBOARD_ADDRESS", ":0")
    monkeypatch.setenv("SLIDEMILL_CLUSTER__LOG_DIRECTORY", str(tmp_path / "logs"))
    monkeypatch.setenv("SLIDEMILL_CLUSTER__SHARED_TEMP_DIRECTORY", str(tmp_path / "tls"))
    config = load_cluster_config(example_config("slurm"))
    assert isinstance(config, SlurmClusterConfig)
    return config


def test_slurm_job_scripts_for_the_cpu_and_gpu_pools(slurm_example: SlurmClusterConfig) -> None:
    with slurm_pools(slurm_example) as pools:
        cpu, gpu = pools.cpu, pools.gpu
        assert gpu is not None
        cpu_script, gpu_script = cpu.job_script(), gpu.job_script()
        scheduler, gpu_own_scheduler = cpu.scheduler.address, gpu.scheduler.address
        assert not cpu.worker_spec and not gpu.worker_spec  # nothing submitted
    assert cpu.status == Status.closed and gpu.status == Status.closed
    cpu_lines, gpu_lines = cpu_script.splitlines(), gpu_script.splitlines()
    for lines in (cpu_lines, gpu_lines):
        assert "#SBATCH -A pathology-lab" in lines
        assert "#SBATCH -t 04:00:00" in lines
        assert "#SBATCH --mem=64G" in lines  # 64GiB: SLURM's G
        assert "module load python/3.11" in lines
        assert "source /shared/envs/slidemill/bin/activate" in lines
    assert "#SBATCH -p cpu" in cpu_lines and "#SBATCH --qos=normal" in cpu_lines
    assert "#SBATCH -p gpu" in gpu_lines and "#SBATCH --gres=gpu:a100:1" in gpu_lines
    assert "module load cuda/12.4" in gpu_lines and "module load cuda/12.4" not in cpu_lines
    assert not any("--gres" in line for line in cpu_lines)

    def worker_command(lines: list[str]) -> list[str]:
        (line,) = [line for line in lines if " -m distributed.cli.dask_worker " in line]
        return shlex.split(line)

    cpu_cmd, gpu_cmd = worker_command(cpu_lines), worker_command(gpu_lines)
    # both pools' workers join the CPU pool's scheduler
    assert cpu_cmd[3] == scheduler and gpu_cmd[3] == scheduler != gpu_own_scheduler
    assert cpu_cmd[cpu_cmd.index("--nworkers") + 1] == "16"
    assert cpu_cmd[cpu_cmd.index("--nthreads") + 1] == "1"
    assert cpu_cmd[cpu_cmd.index("--lifetime") + 1] == "230m"
    assert "--resources" not in cpu_cmd
    assert gpu_cmd[gpu_cmd.index("--resources") + 1] == "GPU=1"
    assert gpu_cmd[gpu_cmd.index("--nthreads") + 1] == "8"
    assert "--nworkers" not in gpu_cmd  # one worker per GPU, one GPU per job

    def nanny_env(lines: list[str]) -> dict[str, Any]:
        (line,) = [line for line in lines if line.startswith(f"export {PRE_SPAWN_ENVIRON_VAR}=")]
        return _pre_spawn_environ(shlex.split(line.removeprefix("export "))[0].split("=", 1)[1])

    # the export comes after the prologue (whose module loads could set these) ...
    assert cpu_lines.index("source /shared/envs/slidemill/bin/activate") < next(
        i for i, line in enumerate(cpu_lines) if PRE_SPAWN_ENVIRON_VAR in line
    )
    # ... and dask in the job reads it as the nanny's pre-spawn environment
    assert nanny_env(cpu_lines) == {
        "MALLOC_MMAP_THRESHOLD_": "268435456",  # an encoder batch stays in the heap
        "MALLOC_TRIM_THRESHOLD_": "268435456",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    assert nanny_env(gpu_lines)["OMP_NUM_THREADS"] == "8"


def test_slurm_jobs_with_several_gpus_start_dask_cudas_worker() -> None:
    config = load_cluster_config(example_config("slurm"))
    assert isinstance(config, SlurmClusterConfig) and config.gpu is not None
    four = config.model_copy(update={"gpu": config.gpu.model_copy(update={"gpus": 4})})
    kwargs = gpu_job_kwargs(four)
    assert kwargs["worker_command"] == CUDA_WORKER
    assert kwargs["processes"] == 4
    assert kwargs["job_extra_directives"][0] == "--gres=gpu:a100:4"
    assert kwargs["worker_extra_args"][:2] == ["--resources", "GPU=1"]


_FAKE_SBATCH = """#!/bin/sh
if [ "$1" = --test-only ]; then echo "sbatch: Job 1 to start at now" >&2; exit 0; fi
cp "$1" "{jobs}/$$.sh"
echo "Submitted batch job $$"
"""
_FAKE_SCANCEL = """#!/bin/sh
echo "$@" >> "{jobs}/../cancelled"
"""


def test_slurm_backend_submits_the_configured_jobs_and_cancels_them(
    slurm_example: SlurmClusterConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through stand-in `sbatch`/`scancel` commands that record what dask-jobqueue submits."""
    jobs, bin_dir = tmp_path / "jobs", tmp_path / "bin"
    jobs.mkdir()
    bin_dir.mkdir()
    for name, text in (("sbatch", _FAKE_SBATCH), ("scancel", _FAKE_SCANCEL)):
        (bin_dir / name).write_text(text.format(jobs=jobs))
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cpu = slurm_example.cpu.model_copy(update={"adapt": Adapt(minimum=1, maximum=3)})
    config = slurm_example.model_copy(update={"cpu": cpu})
    with connect(config) as client:
        assert isinstance(client, Client)
        deadline = time.monotonic() + 30
        while len(list(jobs.iterdir())) < 3:  # adapt's minimum of 1 CPU job, 2 GPU jobs
            assert time.monotonic() < deadline, f"submitted: {sorted(jobs.iterdir())}"
            time.sleep(0.1)
        submitted = {p.stem: p.read_text() for p in jobs.iterdir()}
    scripts = list(submitted.values())
    assert sum("#SBATCH -J slidemill-cpu" in s for s in scripts) == 1
    assert sum("#SBATCH -J slidemill-gpu" in s for s in scripts) == 2
    # closing the cluster objects cancels every job they submitted
    assert sorted((tmp_path / "cancelled").read_text().split()) == sorted(submitted)


# ---------------------------------------------------------------------------------------------
# Kubernetes: the operator's own spec helpers, no cluster


def scheduler_image(cluster: dict[str, Any]) -> str:
    (container,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    return str(container["image"])


def test_image_tags_are_versions_with_the_local_part_joined_by_a_dash() -> None:
    assert image_tag("0.2.0") == "0.2.0"
    assert image_tag("0.2.1.dev3+g1a2b3c4.d20261207") == "0.2.1.dev3-g1a2b3c4.d20261207"
    assert image_tag() == slidemill_version().replace("+", "-")


def test_version_in_an_image_is_the_installed_ones_tag(clean_environ: None) -> None:
    config = load_cluster_config(example_config("kubernetes"))
    assert isinstance(config, KubernetesClusterConfig)
    data = config.model_dump() | {"image": "registry.lab/slidemill:{version}-site"}
    data["cpu"] = data["cpu"] | {"image": "registry.lab/cpu:{version}"}
    again = KubernetesClusterConfig.model_validate(data)
    assert again.image == f"registry.lab/slidemill:{image_tag()}-site"
    assert again.cpu.image == f"registry.lab/cpu:{image_tag()}"
    # a name without the field stays as written
    assert KubernetesClusterConfig.model_validate(data | {"image": "x/y:1"}).image == "x/y:1"


def test_kubernetes_spec_has_image_namespace_gpu_limits_and_resources(
    clean_environ: None,
) -> None:
    config = load_cluster_config(example_config("kubernetes"))
    assert isinstance(config, KubernetesClusterConfig)
    spec = kubernetes_spec(config)
    cluster = spec.cluster
    assert cluster["kind"] == "DaskCluster"
    assert cluster["metadata"]["namespace"] == "pathology"
    name = cluster["metadata"]["name"]
    assert name.startswith("slidemill-") and "{" not in name
    assert cluster["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == name
    cpu = cluster["spec"]["worker"]
    assert cpu["replicas"] == 1  # adapt minimum
    (cpu_container,) = cpu["spec"]["containers"]
    # the images `make images` tags: this slidemill's version, '+' as '-'
    tag = slidemill_version().replace("+", "-")
    assert cpu_container["image"] == f"localhost/slidemill:{tag}"
    assert scheduler_image(cluster) == f"localhost/slidemill:{tag}"
    assert cpu_container["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    assert "--resources" not in cpu_container["args"]
    assert {"name": "pathology-data", "mountPath": "/data"} in cpu_container["volumeMounts"]
    (scheduler,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}

    gpu = spec.worker_groups["gpu"]
    assert gpu["replicas"] == 2
    (gpu_container,) = gpu["spec"]["containers"]
    assert gpu_container["image"] == f"localhost/slidemill:{tag}-cuda"
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = gpu_container["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nthreads") + 1] == "4"
    assert gpu["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e["value"] for e in gpu_container["env"]}
    assert env["TZ"] == "UTC"
    assert _pre_spawn_environ(env[PRE_SPAWN_ENVIRON_VAR])["OMP_NUM_THREADS"] == "4"


def test_preview_shows_what_would_be_submitted(slurm_example: SlurmClusterConfig) -> None:
    slurm = preview(slurm_example)
    assert slurm.count("#!/usr/bin/env bash") == 2
    assert "#SBATCH -J slidemill-cpu" in slurm and "#SBATCH --gres=gpu:a100:1" in slurm
    # (read directly: the SLIDEMILL_CLUSTER__ overrides of the SLURM fixture are set)
    kubernetes = yaml.safe_load(example_config("kubernetes").read_text())
    documents = list(yaml.safe_load_all(preview(ClusterConfig.model_validate(kubernetes).root)))
    assert [d["kind"] for d in documents] == ["DaskCluster", "DaskWorkerGroup"]
    cluster, group = documents
    assert group["metadata"]["name"] == f"{cluster['metadata']['name']}-gpu"
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    local = yaml.safe_load(preview(LocalClusterConfig()))
    assert local["nanny_env"]["malloc_trim_threshold"] == 256 * 2**20


# ---------------------------------------------------------------------------------------------
# real clusters on this machine


def test_local_backend_starts_worker_processes_with_the_nanny_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_environ: None
) -> None:
    config_file = _write(
        tmp_path,
        {
            "backend": "local",
            "n_workers": 2,
            "memory_limit": "600MiB",
            "nanny_env": {
                "malloc_trim_threshold": 131072,
                "malloc_mmap_threshold": None,
                "extra": {"SLIDEMILL_PROBE": "on"},
            },
        },
    )
    monkeypatch.setenv("SLIDEMILL_CLUSTER_FILE", str(config_file))  # connect() reads the env

    def probe() -> dict[str, str | int | None]:
        return {
            "pid": os.getpid(),
            **{k: os.environ.get(k) for k in (*NANNY_VARS, "SLIDEMILL_PROBE")},
        }

    with connect() as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        seen = client.run(probe)
    assert len(workers) == 2
    assert {w["nthreads"] for w in workers.values()} == {1}
    assert {w["memory_limit"] for w in workers.values()} == {600 * 2**20}
    pids = {s["pid"] for s in seen.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # worker processes, not threads
    for s in seen.values():
        assert s["MALLOC_TRIM_THRESHOLD_"] == "131072"
        assert s["MALLOC_MMAP_THRESHOLD_"] is None  # null: left unset
        assert s["OMP_NUM_THREADS"] == s["MKL_NUM_THREADS"] == s["OPENBLAS_NUM_THREADS"] == "1"
        assert s["SLIDEMILL_PROBE"] == "on"


def test_existing_backend_connects_by_address_and_scheduler_file(
    tmp_path: Path, clean_environ: None
) -> None:
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        address = cluster.scheduler_address
        with connect(load_cluster_config(scheduler=address)) as client:
            assert client.scheduler_info()["address"] == address
            assert client.submit(sum, [1, 2]).result() == 3
            assert gpu_workers(client) == []
        scheduler_file = tmp_path / "scheduler.json"
        scheduler_file.write_text(json.dumps({"address": address}))
        config = ExistingClusterConfig(backend="existing", scheduler_file=scheduler_file)
        with connect(config) as client:
            assert client.scheduler_info()["address"] == address
        assert cluster.status == Status.running  # an existing cluster is left running


class _StandInLocalCUDACluster(LocalCluster):
    """dask-cuda's LocalCUDACluster, reduced to what slidemill relies on: one worker per entry
    of CUDA_VISIBLE_DEVICES, extra keywords passed to the workers."""

    received: ClassVar[dict[str, Any]] = {}

    def __init__(self, CUDA_VISIBLE_DEVICES: list[int] | None = None, **kwargs: Any) -> None:  # noqa: N803
        type(self).received = {"CUDA_VISIBLE_DEVICES": CUDA_VISIBLE_DEVICES, **kwargs}
        kwargs.pop("device_memory_limit", None)
        super().__init__(n_workers=len(CUDA_VISIBLE_DEVICES or [0]), processes=True, **kwargs)


def test_cuda_backend_gives_gpu_workers_a_gpu_resource_and_adds_cpu_workers(
    monkeypatch: pytest.MonkeyPatch, clean_environ: None
) -> None:
    stand_in = types.ModuleType("dask_cuda")
    stand_in.LocalCUDACluster = _StandInLocalCUDACluster  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dask_cuda", stand_in)
    config = CudaClusterConfig(
        backend="cuda", devices=[0], cpu_workers=1, memory_limit="600MiB", device_memory_limit=0.5
    )

    def visible() -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    with connect(config) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        gpus = gpu_workers(client)
        devices = client.run(visible)
    received = _StandInLocalCUDACluster.received
    assert received["CUDA_VISIBLE_DEVICES"] == [0]
    assert received["resources"] == {"GPU": 1}
    assert received["device_memory_limit"] == 0.5
    assert len(workers) == 2 and len(gpus) == 1
    (cpu_worker,) = set(workers) - set(gpus)
    assert workers[cpu_worker]["resources"] == {}
    assert devices[cpu_worker] == ""  # the CPU worker sees no GPU
    assert {w["memory_limit"] for w in workers.values()} == {600 * 2**20}


# ---------------------------------------------------------------------------------------------
# TLS by default beyond loopback; pools that never start


def test_slurm_job_scripts_carry_tls_unless_the_config_says_plain_tcp(
    slurm_example: SlurmClusterConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with slurm_pools(slurm_example) as pools:
        script, address = pools.cpu.job_script(), pools.cpu.scheduler.address
        certs = sorted(p.name for p in (Path(slurm_example.shared_temp_directory)).iterdir())
    assert address.startswith("tls://") and f" {address} " in script
    assert "--tls-ca-file" in script and "--tls-cert" in script and "--tls-key" in script
    assert len(certs) == 6  # CA, certificate and key, for each pool (cpu, gpu)
    assert all(c.startswith(".dask-jobqueue.worker.") for c in certs)
    assert not list(Path(slurm_example.shared_temp_directory).iterdir())  # removed on close
    plain = slurm_example.model_copy(update={"tls": False})
    with caplog.at_level("WARNING"), slurm_pools(plain) as pools:
        script, address = pools.cpu.job_script(), pools.cpu.scheduler.address
    assert address.startswith("tcp://") and "--tls" not in script
    assert "plain TCP (tls: false)" in caplog.text


def _worker_line(script: str) -> list[str]:
    (line,) = [line for line in script.splitlines() if " -m distributed.cli.dask_worker " in line]
    return shlex.split(line)


def test_slurm_workers_start_inside_the_image_with_podman_or_apptainer(
    slurm_example: SlurmClusterConfig,
) -> None:
    """`container`: the job scripts start the image's python through the runtime, with the
    node's network, the configured folders, node-local scratch and the run's TLS files at the
    same paths, and a GPU job's devices."""
    podman = SlurmContainer(
        runtime="podman", image="localhost/slidemill:{version}", binds=["/shared", "/data"],
        options=["--ulimit", "nofile=65536:65536"],
    )  # fmt: skip
    assert podman.image == f"localhost/slidemill:{image_tag()}"
    config = slurm_example.model_copy(update={"python": None, "container": podman})
    with slurm_pools(config) as pools:
        assert pools.gpu is not None
        cpu, gpu = _worker_line(pools.cpu.job_script()), _worker_line(pools.gpu.job_script())
        address = pools.cpu.scheduler.address
    tls = str(Path(config.shared_temp_directory).expanduser())
    for words in (cpu, gpu):
        assert words[:3] == ["podman", "run", "--rm"]
        assert "--network=host" in words and "--env=DASK_*" in words
        mounts = [w.removeprefix("--volume=") for w in words if w.startswith("--volume=")]
        # $TMPDIR is left for the job's shell to expand, so it was in double quotes
        assert mounts == ["/shared:/shared", "/data:/data", "$TMPDIR:$TMPDIR", f"{tls}:{tls}"]
        image = words.index(podman.image)
        assert words[image - 2 : image] == ["--ulimit", "nofile=65536:65536"]
        assert words[image + 1 : image + 4] == ["python", "-m", "distributed.cli.dask_worker"]
        assert words[image + 4] == address
    assert "--device=nvidia.com/gpu=all" in gpu and "--device=nvidia.com/gpu=all" not in cpu

    apptainer = SlurmContainer(runtime="apptainer", image="/shared/slidemill-{version}.sif")
    config = slurm_example.model_copy(update={"python": None, "container": apptainer, "tls": False})
    kwargs = gpu_job_kwargs(config)
    words = shlex.split(kwargs["python"])
    assert words[:3] == ["apptainer", "exec", "--nv"]
    assert words[-2:] == [f"/shared/slidemill-{image_tag()}.sif", "python"]
    assert "--nv" not in shlex.split(cpu_job_kwargs(config)["python"])
    assert container_python(config, gpu=False).count("--bind=") == 1  # $TMPDIR; no TLS folder


def test_a_slurm_config_names_the_nodes_python_or_a_container_not_both(
    slurm_example: SlurmClusterConfig,
) -> None:
    data = slurm_example.model_dump(mode="json") | {
        "container": {"runtime": "podman", "image": "localhost/slidemill:{version}"}
    }
    with pytest.raises(ValueError, match="not both"):
        SlurmClusterConfig.model_validate(data)
    assert SlurmClusterConfig.model_validate(data | {"python": None}).container is not None


def test_an_existing_scheduler_beyond_loopback_needs_tls_or_an_explicit_plain_tcp(
    tmp_path: Path, clean_environ: None, caplog: pytest.LogCaptureFixture
) -> None:
    from slidemill.cluster import existing_security

    assert existing_security("tcp://127.0.0.1:8786", None, "here") is None
    with pytest.raises(ClusterConfigError, match=r"plain TCP beyond loopback.*tls: false"):
        existing_security("tcp://10.0.0.5:8786", None, "here")
    with pytest.raises(ClusterConfigError, match=r"speaks TLS: name its certificates"):
        existing_security("tls://10.0.0.5:8786", None, "here")
    with caplog.at_level("WARNING"):
        assert existing_security("tcp://10.0.0.5:8786", False, "here") is None
    assert "plain TCP" in caplog.text
    files = TlsFiles(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "c.pem")
    with pytest.raises(ClusterConfigError, match=r"no certificate file .*ca\.pem"):
        existing_security("tls://10.0.0.5:8786", files, "here")
    config = load_cluster_config(
        _write(tmp_path, {"backend": "existing", "scheduler": "tls://h:1", "tls": {
            "ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}})
    )  # fmt: skip
    assert isinstance(config, ExistingClusterConfig) and isinstance(config.tls, TlsFiles)


def test_a_pool_fails_to_start_only_after_its_timeout_and_with_every_jobs_reason() -> None:
    jobs = [QueuedJob("7", "PENDING", "BeginTime"), QueuedJob("8", "PENDING", "None")]
    assert start_failure("SLURM pool 'cpu'", 4.9, 5, False, jobs) is None
    assert start_failure("SLURM pool 'cpu'", 60, 5, True, jobs) is None  # it started once
    assert start_failure("SLURM pool 'cpu'", 60, 5, False, []) is None  # nothing submitted
    assert start_failure("SLURM pool 'cpu'", 5, 5, False, jobs) == (
        "SLURM pool 'cpu' did not start within 5 s, no worker joined: "
        "job 7 PENDING (BeginTime); job 8 PENDING"
    )
