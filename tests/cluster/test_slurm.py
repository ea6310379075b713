"""On a real single-node SLURM (`conftest.slurm`), through the public command line and cluster
config files: worker jobs over TLS, a job cancelled mid-batch, workers retiring before their
walltime, pools that never start, and the lab service on SLURM.

Jobs are sized for two cores: one core and 4 GiB each, single-threaded workers. The slides and
the output folder are on this machine's filesystem, which the jobs see (a multi-node site needs
a shared one: docs/guides/slurm.md). Every SLURM test is in this file, so one pytest
process (`--dist loadfile`) starts one SLURM. What each fault test saw (job ids, how long a
replacement took) is printed; `pytest -s` shows it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dask.config
import pytest
import yaml
from distributed import get_task_stream
from distributed.security import Security

from slidemill.cluster import (
    LIFETIME_FLOOR_S,
    WALLTIME_MARGIN_S,
    Lifetime,
    connect,
    load_cluster_config,
)
from slidemill.pipeline.graph import BatchHooks, run_batch
from slidemill.schemas import RunSpec
from tests.cluster.slurm_harness import SingleNodeSlurm
from tests.helpers import refused, slidemill
from tests.service.conftest import TOKEN, start_service

pytestmark = pytest.mark.slow

JOB = {"cores": 1, "memory": "4GiB", "walltime": "00:10:00"}
"""One worker job: a core and 4 GiB (a tiny-model worker reaches ~1.2 GiB)."""
REGISTERED = re.compile(r"Registered to:\s+(\S+)")
# dask's adaptive target counts seconds of queued work per worker (default 5 s); this small
# batch asks for its second job only when that is shorter
EAGER_ADAPT = {"DASK_DISTRIBUTED__ADAPTIVE__TARGET_DURATION": "1s"}
# small tasks, many of them; every run here (the LocalCluster's too) cuts the same blocks, so the
# encoder sees the same batches and the scores are equal to the bit
BLOCKS = ("--tiles-per-task", "8")


def _config(folder: Path, cpu: dict[str, Any], **settings: Any) -> Path:
    """A SLURM cluster config on loopback, with logs and temporary certificates in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "backend": "slurm",
        "interface": "lo",
        "dashboard_address": ":0",
        "log_directory": str(folder / "logs"),
        "shared_temp_directory": str(folder / "tls"),
        **settings,
        "cpu": {**JOB, **cpu},
    }
    path = folder / "slurm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _probabilities(out: Path) -> dict[str, list[float]]:
    return {
        p.parent.name: json.loads(p.read_text())["probabilities"] for p in out.glob("*/result.json")
    }


def _results(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _registered(logs: Path) -> dict[str, str]:
    """Job id → the scheduler address its worker registered to, from the job logs."""
    seen = {}
    for err in logs.glob("slidemill-cpu-*.err"):
        match = REGISTERED.search(err.read_text(errors="replace"))
        if match:
            seen[err.stem.rsplit("-", 1)[1]] = match.group(1)
    return seen


def _popen(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slidemill.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def local_scores(
    slides_dir: Path, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[float]]:
    """The generated slides' probabilities from the embedded LocalCluster."""
    out = tmp_path_factory.mktemp("local")
    proc = slidemill(
        "run", slides_dir, "--model", tiny_bundle, "--out", out, "--workers", "1",
        "--no-progress", *BLOCKS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _probabilities(out)


@pytest.fixture(scope="module")
def many_slides(
    slides_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """A folder of twelve slides (hard links to the two generated ones), and slide id → the
    original's id."""
    folder = tmp_path_factory.mktemp("many")
    source = {}
    for i in range(6):
        for original in ("synth-svs.svs", "synth-tiff.tiff"):
            stem, suffix = original.split(".")
            os.link(slides_dir / original, folder / f"{stem}-{i}.{suffix}")
            source[f"{stem}-{i}"] = stem
    return folder, source


@pytest.fixture
def slurm_env(slurm: SingleNodeSlurm) -> Iterator[SingleNodeSlurm]:
    """The cluster, with no job of an earlier test left in its queue."""
    yield slurm
    slurm.command("scancel", "--full", "--quiet", "-u", "root", check=False)


def _every_slide_done_once(out: Path, expected: dict[str, list[float]]) -> None:
    rows = _results(out)
    assert sorted(r["slide_id"] for r in rows) == sorted(expected)  # each slide once
    assert {r["status"] for r in rows} == {"done"}, rows
    assert _probabilities(out) == expected  # the LocalCluster's scores, bit for bit
    assert not (out / ".partial").exists() or not any((out / ".partial").iterdir())


def test_scale_2_runs_every_slide_over_tls_with_the_local_scores(
    slurm_env: SingleNodeSlurm,
    slides_dir: Path,
    tiny_bundle: Path,
    local_scores: dict[str, list[float]],
    tmp_path: Path,
) -> None:
    config = _config(tmp_path / "cluster", {"scale": 2})
    out = tmp_path / "out"
    proc = slidemill(
        "run", slides_dir, "--model", tiny_bundle, "--out", out, "--cluster", config,
        "--no-progress", *BLOCKS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    _every_slide_done_once(out, local_scores)
    registered = _registered(tmp_path / "cluster" / "logs")
    assert len(registered) == 2, slurm_env.jobs()
    assert all(a.startswith("tls://") for a in registered.values()), registered
    jobs = slurm_env.jobs()
    assert {jobs[j][0] for j in registered} == {"slidemill-cpu"}
    # the jobs end with the run; the temporary certificates are removed with the cluster
    assert {jobs[j][1] for j in registered} <= {"CANCELLED", "COMPLETED", "COMPLETING"}
    assert not list((tmp_path / "cluster" / "tls").iterdir())
    print(f"\nscale 2: jobs {sorted(registered)}, workers on {set(registered.values())}")


def test_a_client_without_the_certificate_is_refused(
    slurm_env: SingleNodeSlurm, tmp_path: Path
) -> None:
    config = load_cluster_config(_config(tmp_path, {"scale": 1}))
    with connect(config) as client:
        address = client.scheduler_info()["address"]
        assert isinstance(address, str) and address.startswith("tls://")
        client.wait_for_workers(1, timeout=180)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert all(w.startswith("tls://") for w in workers)
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        # the run's certificate gets in; no client certificate, one from another CA and plain
        # TCP to the TLS port do not
        assert not refused(address, **client.security.get_connection_args("client"))
        ca = client.security.tls_ca_file
        assert ca is not None
        no_cert = ssl.create_default_context(
            **({"cadata": ca} if ca.lstrip().startswith("-----") else {"cafile": ca})
        )
        no_cert.check_hostname = False
        assert refused(address, ssl_context=no_cert)
        assert refused(address, **Security.temporary().get_connection_args("client"))
        assert refused(address.replace("tls://", "tcp://"))
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1


def test_a_worker_job_cancelled_mid_batch_is_replaced_and_nothing_is_lost(
    slurm_env: SingleNodeSlurm,
    many_slides: tuple[Path, dict[str, str]],
    tiny_bundle: Path,
    local_scores: dict[str, list[float]],
    tmp_path: Path,
) -> None:
    slides, source = many_slides
    config = _config(tmp_path / "cluster", {"adapt": {"minimum": 0, "maximum": 2}})
    logs, out = tmp_path / "cluster" / "logs", tmp_path / "out"
    t0 = time.monotonic()
    proc = _popen(
        "run", slides, "--model", tiny_bundle, "--out", out, "--cluster", config,
        "--no-progress", *BLOCKS, env=EAGER_ADAPT,
    )  # fmt: skip
    try:
        deadline = t0 + 240
        while not _registered(logs):  # a worker at work: the batch is under way
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, slurm_env.jobs()
            time.sleep(0.25)
        first = sorted(_registered(logs), key=int)
        finished = len(list(out.glob("*/result.json")))
        assert finished < len(source)  # mid-batch
        # every job the batch has (working or still pending): only replacements can finish it
        active = ("PENDING", "CONFIGURING", "RUNNING")
        victims = sorted((j for j, (_, st, _) in slurm_env.jobs().items() if st in active), key=int)
        slurm_env.command("scancel", *victims)
        cancelled_at = time.monotonic()
        known = set(slurm_env.jobs())
        replacement: str | None = None
        submitted_at: float | None = None
        while proc.poll() is None:
            assert time.monotonic() < deadline + 120, slurm_env.jobs()
            if replacement is None:
                new = set(slurm_env.jobs()) - known
                if new:
                    replacement, submitted_at = min(new, key=int), time.monotonic()
            time.sleep(0.5)
        output = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    expected = {sid: local_scores[src] for sid, src in source.items()}
    _every_slide_done_once(out, expected)
    jobs = slurm_env.jobs()
    assert all(jobs[v][1] == "CANCELLED" for v in victims), jobs
    # adapt asked SLURM for a job in place of the cancelled one
    assert replacement is not None and submitted_at is not None, (jobs, output[-2000:])
    joined = replacement in _registered(logs)
    print(
        f"\nscancel: jobs {first} working, {finished} of {len(source)} slides done at "
        f"{cancelled_at - t0:.1f} s; cancelled {victims}; replacement job {replacement} submitted "
        f"{submitted_at - cancelled_at:.1f} s later (its worker joined before the end: {joined}, "
        f"state {jobs[replacement][1]}); batch {time.monotonic() - t0:.1f} s; "
        f"jobs seen: {sorted(jobs, key=int)}"
    )


def _job_logs(logs: Path) -> dict[str, str]:
    """Job id → its worker's log."""
    return {
        err.stem.rsplit("-", 1)[1]: err.read_text(errors="replace")
        for err in logs.glob("slidemill-cpu-*.err")
    }


def _logged_at(log: str, pattern: str) -> datetime | None:
    """When a worker's log first says `pattern` (its lines start with a timestamp)."""
    match = re.search(rf"^(\S+ \S+) - .*{pattern}", log, re.MULTILINE)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f") if match else None


def _lifetime_of(slurm: SingleNodeSlurm, job: str) -> Lifetime:
    """The lifetime in the worker command SLURM ran for `job`."""
    script = slurm.command("scontrol", "write", "batch_script", job, "-").stdout
    args = shlex.split(next(line for line in script.splitlines() if "dask_worker" in line))
    return Lifetime(
        float(args[args.index("--lifetime") + 1].removesuffix("s")),
        float(args[args.index("--lifetime-stagger") + 1].removesuffix("s")),
    )


@pytest.mark.timeout(480)  # the floor alone is a minute; room for a loaded machine
def test_workers_retire_before_their_walltime_and_new_jobs_take_over(
    slurm_env: SingleNodeSlurm,
    many_slides: tuple[Path, dict[str, str]],
    tiny_bundle: Path,
    local_scores: dict[str, list[float]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Jobs of three minutes whose workers are set to retire after 100 ms (`--lifetime`), less
    than any worker needs to load the model and finish a task: as configured, every worker
    retires before doing any work, its task going to the next, and no batch ends (so it was
    before slidemill fitted lifetimes; with 8 s, so it was on a busy machine). slidemill gives
    them its floor instead. Batches of twelve slides then run one after another on the cluster
    until a worker has retired through its lifetime and one started after that has done work:
    each batch ends, with the LocalCluster's scores, however long the machine takes, and no
    job reaches its walltime."""
    slides, source = many_slides
    expected = {sid: local_scores[src] for sid, src in source.items()}
    cpu = {
        "walltime": "00:03:00",
        "worker_extra_args": ["--lifetime", "100ms"],
        "adapt": {"minimum": 0, "maximum": 2},
    }
    config = load_cluster_config(_config(tmp_path / "cluster", cpu))
    logs = tmp_path / "cluster" / "logs"
    first = Lifetime(LIFETIME_FLOOR_S)
    t0 = time.monotonic()
    deadline = t0 + 360
    batches: list[float] = []
    took_over: set[str] = set()
    with (
        dask.config.set({"distributed.adaptive.target-duration": "1s"}),  # as EAGER_ADAPT
        caplog.at_level(logging.WARNING),
        connect(config) as client,
    ):
        # one line, as the cluster starts, says what the workers get instead
        (raised,) = [r.getMessage() for r in caplog.records if "--lifetime" in r.getMessage()]
        assert raised.startswith("SLURM pool 'cpu': --lifetime 0.1s --lifetime-stagger 0s is ")
        assert raised.endswith(f"; its workers get {first}")
        while not took_over:
            assert time.monotonic() < deadline, (slurm_env.jobs(), batches)
            cancel = threading.Event()  # stops a batch that outlives the deadline
            timer = threading.Timer(deadline - time.monotonic(), cancel.set)
            timer.start()
            spec = RunSpec(
                slides=(slides,), model=tiny_bundle, out=tmp_path / f"out-{len(batches)}",
                tiles_per_task=int(BLOCKS[1]),
            )  # fmt: skip
            started = time.monotonic()
            try:
                with get_task_stream(client) as stream:
                    report = run_batch(spec, hooks=BatchHooks(client=client, cancel=cancel))
            finally:
                timer.cancel()
            batches.append(time.monotonic() - started)
            assert report.stopped is None, (report.stopped, slurm_env.jobs(), batches)
            _every_slide_done_once(spec.out, expected)
            # which jobs' workers worked, and whether one started after a worker retired
            worked = {t["worker"] for t in stream.data if t.get("status") == "OK"}
            job_logs = _job_logs(logs)
            retired = [
                at for log in job_logs.values() if (at := _logged_at(log, "lifetime-reached"))
            ]
            for job, log in job_logs.items():
                address = re.search(r"Start worker at:\s+(\S+)", log)
                start = _logged_at(log, "Start worker at")
                if (
                    address
                    and address.group(1) in worked
                    and start
                    and start > min(retired, default=start)
                ):
                    took_over.add(job)
    ran = sorted(_registered(logs), key=int)
    jobs = slurm_env.jobs()
    assert not [j for j, (_, state, _) in jobs.items() if state == "TIMEOUT"], jobs
    # every job's workers got a lifetime with room for work and ending before the walltime;
    # later jobs never less than earlier ones (more, once workers were measured)
    lifetimes = [_lifetime_of(slurm_env, job) for job in ran]
    assert str(lifetimes[0]) == str(first)
    for lifetime in lifetimes:
        assert lifetime.shortest_s >= LIFETIME_FLOOR_S
        assert lifetime.longest_s <= 180 - WALLTIME_MARGIN_S
    assert [x.shortest_s for x in lifetimes] == sorted(x.shortest_s for x in lifetimes)
    print(
        f"\nwalltime: jobs {ran} ran with lifetimes {[str(x) for x in lifetimes]}; jobs "
        f"{sorted(took_over, key=int)} took over from retired workers; {len(batches)} batches "
        f"of {len(source)} slides ({', '.join(f'{b:.1f}' for b in batches)} s); "
        f"{time.monotonic() - t0:.1f} s in all"
    )


def test_a_partition_that_does_not_exist_is_one_line_naming_the_pool(
    slurm_env: SingleNodeSlurm, slides_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, {"scale": 1, "partition": "nope"})
    t0 = time.monotonic()
    proc = slidemill(
        "run", slides_dir, "--model", tiny_bundle, "--out", tmp_path / "out", "--cluster",
        config, "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 1
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line == (
        "error: SLURM pool 'cpu': sbatch refused its job: "
        "sbatch: error: invalid partition specified: nope"
    )
    assert not slurm_env.jobs() or all(s != "PENDING" for _, s, _ in slurm_env.jobs().values())
    print(f"\nno partition: {time.monotonic() - t0:.1f} s: {line}")


def test_a_job_stuck_pending_stops_the_batch_with_slurms_reason(
    slurm_env: SingleNodeSlurm, slides_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """A job that may not start for an hour (`--begin=now+3600`) with `start_timeout: 5`."""
    cpu = {"scale": 1, "job_extra_directives": ["--begin=now+3600"]}
    config = _config(tmp_path, cpu, start_timeout=5)
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = slidemill(
        "run", slides_dir, "--model", tiny_bundle, "--out", out, "--cluster", config,
        "--no-progress",
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-3000:]
    (stopped,) = [line for line in proc.stderr.splitlines() if line.startswith("stopped:")]
    assert re.fullmatch(
        r"stopped: SLURM pool 'cpu' did not start within 5 s, no worker joined: "
        r"job (\d+) PENDING \(BeginTime\)",
        stopped,
    ), stopped
    job = stopped.split("job ")[1].split()[0]
    assert elapsed < 60
    assert {r["status"] for r in _results(out)} == {"failed"}
    assert slurm_env.jobs()[job][1] == "CANCELLED"  # not left in the queue
    print(f"\npending: {elapsed:.1f} s: {stopped}")


def test_the_service_runs_a_submitted_batch_on_slurm(
    slurm_env: SingleNodeSlurm,
    slides_dir: Path,
    tiny_bundle: Path,
    local_scores: dict[str, list[float]],
    tmp_path: Path,
) -> None:
    config = _config(tmp_path / "cluster", {"scale": 1})
    # the allowed root holds the slides, the bundle and the output folder
    service = start_service(tmp_path / "state", (tmp_path.parent,), "--cluster", str(config))
    try:
        out = tmp_path / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "slidemill.cli", "submit", str(slides_dir), "--model",
             str(tiny_bundle), "--out", str(out), "--server", service.url, "--wait", *BLOCKS],
            capture_output=True, text=True, timeout=240, check=False,
            env={**os.environ, "SLIDEMILL_TOKEN": TOKEN},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:] + service.log.read_text()[-3000:]
        batch = service.get(f"/api/batches/{proc.stdout.strip().splitlines()[0]}")
        assert batch["status"] == "done" and batch["n_done"] == 2
        _every_slide_done_once(out, local_scores)
        registered = _registered(tmp_path / "cluster" / "logs")
        assert len(registered) == 1 and all(a.startswith("tls://") for a in registered.values())
    finally:
        service.stop()
    (job,) = registered
    assert slurm_env.jobs()[job][1] in {"CANCELLED", "COMPLETED", "COMPLETING"}
