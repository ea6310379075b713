"""Worker lifetimes on SLURM: the configured `--lifetime` read as dask reads it, fitted between a
floor and the walltime (property tests), a walltime too short refused in one line, the job
arguments dask-jobqueue gets, and the scheduler plugin that measures workers and raises the
lifetime of later jobs (its hooks driven directly, then on a real LocalCluster)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from distributed import Client, LocalCluster, Worker, WorkerPlugin
from hypothesis import assume, given
from hypothesis import strategies as st

from slidemill.cluster import (
    LIFETIME_FLOOR_S,
    LIFETIME_MULTIPLE,
    WALLTIME_MARGIN_S,
    ClusterConfigError,
    Lifetime,
    LifetimeFit,
    Pace,
    PoolLifetime,
    cpu_job_kwargs,
    example_config,
    fit_lifetime,
    gpu_job_kwargs,
    lifetime_fit,
    load_cluster_config,
    pool_lifetime,
    refit,
    slurm_pools,
    with_lifetime,
)
from slidemill.schemas import SlurmClusterConfig, SlurmCpuPool

SHORTEST_WALLTIME_S = LIFETIME_FLOOR_S + WALLTIME_MARGIN_S

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
walltimes = st.one_of(st.floats(min_value=SHORTEST_WALLTIME_S, max_value=1e6), st.just(math.inf))
lifetimes = st.builds(Lifetime, seconds, seconds)


def _close(a: float, b: float) -> bool:
    """Equal but for float rounding."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def _cpu(**settings: Any) -> SlurmCpuPool:
    return SlurmCpuPool.model_validate({"cores": 1, "memory": "4GiB", "scale": 1, **settings})


def _slurm(tmp_path: Path, **cpu: Any) -> SlurmClusterConfig:
    return SlurmClusterConfig.model_validate(
        {
            "backend": "slurm",
            "interface": "lo",
            "dashboard_address": ":0",
            "shared_temp_directory": str(tmp_path / "tls"),
            "cpu": {"cores": 1, "memory": "4GiB", "scale": 1, **cpu},
        }
    )


# ---------------------------------------------------------------------------------------------
# fitting a lifetime: pure


@given(lifetimes, walltimes, seconds)
def test_a_fitted_lifetime_leaves_time_for_work_and_ends_before_the_walltime(
    configured: Lifetime, walltime_s: float, needed_s: float
) -> None:
    fitted = fit_lifetime(configured, walltime_s, needed_s)
    high = walltime_s - WALLTIME_MARGIN_S
    low = min(max(LIFETIME_FLOOR_S, LIFETIME_MULTIPLE * needed_s), high)
    assert fitted.stagger_s >= 0
    # the shortest lifetime a worker may draw is at least the floor and the measured need ...
    assert fitted.shortest_s >= LIFETIME_FLOOR_S or _close(fitted.shortest_s, LIFETIME_FLOOR_S)
    assert fitted.shortest_s >= low or _close(fitted.shortest_s, low)
    # ... and the longest ends the margin before the walltime
    assert fitted.longest_s <= high or _close(fitted.longest_s, high)
    again = fit_lifetime(fitted, walltime_s, needed_s)  # fitting twice changes nothing
    assert _close(again.duration_s, fitted.duration_s) and _close(again.stagger_s, fitted.stagger_s)


@given(walltimes, seconds, st.floats(0, 1), st.floats(0, 1))
def test_a_lifetime_that_already_fits_is_left_as_configured(
    walltime_s: float, needed_s: float, where: float, spread: float
) -> None:
    high = min(walltime_s - WALLTIME_MARGIN_S, 1e7)
    low = min(max(LIFETIME_FLOOR_S, LIFETIME_MULTIPLE * needed_s), high)
    duration = low + where * (high - low)
    stagger = spread * min(duration - low, high - duration)
    assume(duration - stagger >= low and duration + stagger <= high)  # after rounding
    configured = Lifetime(duration, stagger)
    assert fit_lifetime(configured, walltime_s, needed_s) == configured


@given(lifetimes, walltimes, seconds, seconds)
def test_more_measured_need_never_shortens_a_lifetime(
    configured: Lifetime, walltime_s: float, a: float, b: float
) -> None:
    less, more = sorted((a, b))
    before = fit_lifetime(configured, walltime_s, less)
    after = fit_lifetime(configured, walltime_s, more)
    assert after.shortest_s >= before.shortest_s or _close(after.shortest_s, before.shortest_s)
    # and `refit` hands new jobs a lifetime only when it is longer than theirs
    raised = refit(configured, walltime_s, before, Pace(first_task_s=more))
    assert raised is None or raised.shortest_s > before.shortest_s


@given(lifetimes, st.floats(min_value=0, max_value=SHORTEST_WALLTIME_S, exclude_max=True))
def test_a_walltime_without_room_for_the_floor_is_refused(
    configured: Lifetime, walltime_s: float
) -> None:
    with pytest.raises(ValueError, match="cannot fit a lifetime"):
        fit_lifetime(configured, walltime_s)


def test_a_lifetime_long_enough_keeps_its_value_and_one_too_short_keeps_its_stagger() -> None:
    # 100 ± 90 s under a 3-minute walltime: no draw below the floor, none past 120 s
    assert fit_lifetime(Lifetime(100, 90), 180) == Lifetime(100, 20)
    assert fit_lifetime(Lifetime(3600, 60), 600) == Lifetime(540, 0)
    # 8 ± 1 s: raised to the floor, plus its stagger
    assert fit_lifetime(Lifetime(8, 1), 600) == Lifetime(LIFETIME_FLOOR_S + 1, 1)
    assert fit_lifetime(Lifetime(8, 50), 180) == Lifetime(90, 30)  # as much stagger as fits
    # measured: workers needed 30 s to start and finish a task
    assert fit_lifetime(Lifetime(8, 1), 600, 30) == Lifetime(LIFETIME_MULTIPLE * 30 + 1, 1)
    assert fit_lifetime(Lifetime(8, 1), 600, 1000) == Lifetime(540, 0)  # the walltime wins


other_args = st.lists(
    st.text("abcxyz-=0123456789", min_size=1).filter(
        lambda a: a.split("=", 1)[0] not in ("--lifetime", "--lifetime-stagger")
    ),
    max_size=6,
)


@given(
    other_args,
    st.sampled_from([[], ["--lifetime", "8s"], ["--lifetime=8s", "--lifetime-stagger", "1s"],
                     ["--lifetime-stagger=2m", "--lifetime", "1h"]]),
    st.integers(0, 6),
    lifetimes,
)  # fmt: skip
def test_with_lifetime_replaces_the_lifetime_options_and_keeps_the_rest(
    others: list[str], options: list[str], at: int, lifetime: Lifetime
) -> None:
    at = min(at, len(others))
    out = with_lifetime([*others[:at], *options, *others[at:]], lifetime)
    where = at if options else len(others)  # where the options were, else at the end
    assert out[where : where + 4] == lifetime.args()
    assert out[:where] + out[where + 4 :] == others
    pool = _cpu(worker_extra_args=out)  # dask reads back what was written
    assert pool.lifetime_s == (lifetime.duration_s or None) or math.isclose(
        pool.lifetime_s or 0, lifetime.duration_s, abs_tol=1e-3
    )
    assert math.isclose(pool.lifetime_stagger_s, lifetime.stagger_s, abs_tol=1e-3)


# ---------------------------------------------------------------------------------------------
# the config: what dask reads, and the walltime


@given(st.integers(0, 30), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_slurm_walltimes_are_read_in_seconds(
    days: int, hours: int, minutes: int, secs: int
) -> None:
    def walltime_s(walltime: str) -> float:
        return _cpu(walltime=walltime).walltime_s

    def limit(total: int) -> float:
        return float(total) if total else math.inf  # SLURM's 0: no limit

    hours_total = days * 24 + hours
    total = (hours_total * 60 + minutes) * 60 + secs
    assert walltime_s(f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}") == limit(total)
    assert walltime_s(f"{hours_total:02d}:{minutes:02d}:{secs:02d}") == limit(total)
    assert walltime_s(f"{days}-{hours}:{minutes:02d}") == limit(total - secs)
    assert walltime_s(f"{days}-{hours}") == limit(hours_total * 3600)
    assert walltime_s(f"{minutes}:{secs:02d}") == limit(minutes * 60 + secs)
    assert walltime_s(str(minutes)) == limit(minutes * 60)


def test_a_lifetime_dask_cannot_read_is_refused_with_the_config(tmp_path: Path) -> None:
    path = tmp_path / "slurm.yaml"
    for args, message in (
        (["--lifetime", "3h50m"], "--lifetime '3h50m' is not a duration dask reads"),
        (["--lifetime-stagger=soon"], "--lifetime-stagger 'soon' is not a duration dask reads"),
        (["--lifetime", "1h", "--lifetime=2h"], "--lifetime is given 2 times; give it once"),
        (["--lifetime"], "--lifetime needs a value"),
    ):
        cpu = {"cores": 1, "memory": "4GiB", "scale": 1, "worker_extra_args": args}
        path.write_text(yaml.safe_dump({"backend": "slurm", "cpu": cpu}))
        with pytest.raises(ClusterConfigError) as err:
            load_cluster_config(path)
        assert message in str(err.value) and "\n" not in str(err.value)
    pool = _cpu(worker_extra_args=["--lifetime", "230m", "--lifetime-stagger=5m"])
    assert (pool.lifetime_s, pool.lifetime_stagger_s) == (13800, 300)
    assert _cpu(worker_extra_args=["--lifetime", "0"]).lifetime_s is None  # dask: no lifetime
    assert _cpu().lifetime_s is None and _cpu().lifetime_stagger_s == 0


def test_a_walltime_too_short_for_any_lifetime_is_refused_in_one_line_naming_the_pool(
    tmp_path: Path,
) -> None:
    config = _slurm(
        tmp_path,
        walltime="00:01:00",
        worker_extra_args=["--lifetime", "8s", "--lifetime-stagger", "1s"],
    )
    with pytest.raises(ClusterConfigError) as err:
        cpu_job_kwargs(config)
    assert str(err.value) == (
        "SLURM pool 'cpu': walltime 00:01:00 is too short for --lifetime: a worker gets at least "
        f"{LIFETIME_FLOOR_S:g} s to start, load the model and finish a task, and retires "
        f"{WALLTIME_MARGIN_S:g} s before the walltime; give a walltime of at least 00:02:00, "
        "or no --lifetime"
    )
    # without --lifetime a short walltime is the job's own business
    assert cpu_job_kwargs(_slurm(tmp_path, walltime="00:01:00"))["worker_extra_args"] == []


def test_jobs_get_the_fitted_lifetime_and_the_change_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["--lifetime", "100ms", "--lifetime-stagger", "5s", "--death-timeout", "60"]
    config = _slurm(tmp_path, walltime="00:05:00", worker_extra_args=args)
    fitted = Lifetime(LIFETIME_FLOOR_S + 5, 5)
    assert pool_lifetime("cpu", config.cpu) == (Lifetime(0.1, 5), fitted)
    assert cpu_job_kwargs(config)["worker_extra_args"] == [*fitted.args(), "--death-timeout", "60"]
    with caplog.at_level(logging.WARNING), slurm_pools(config) as pools:
        script = pools.cpu.job_script()
    assert f" {fitted} " in script
    (record,) = [r for r in caplog.records if r.name.startswith("slidemill")]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "SLURM pool 'cpu': --lifetime 0.1s --lifetime-stagger 5s is too short for a worker to "
        f"start, load the model and finish a task (at least {LIFETIME_FLOOR_S:g} s); its workers "
        f"get {fitted}"
    )


def test_a_raised_lifetime_reaches_the_jobs_created_afterwards(tmp_path: Path) -> None:
    config = _slurm(tmp_path, walltime="00:10:00", worker_extra_args=["--lifetime", "2m"])
    with slurm_pools(config) as pools:
        fit = lifetime_fit(config, pools)
        assert fit is not None and [p.name for p in fit.pools] == ["SLURM pool 'cpu'"]
        assert fit.pools[0].configured == Lifetime(120)
        before = pools.cpu.new_worker_spec()  # a job's spec made earlier, not yet started
        fit.pools[0].apply(Lifetime(200, 5))
        after = pools.cpu.new_worker_spec()
        scripts = []
        for spec in (before, after):
            ((name, job),) = spec.items()
            made = job["cls"](pools.cpu.scheduler.address, name=str(name), **job["options"])
            scripts.append(made.job_script())
    assert all(" --lifetime 200s --lifetime-stagger 5s " in script for script in scripts)
    assert lifetime_fit(_slurm(tmp_path), pools) is None  # no --lifetime, nothing to watch


def test_the_shipped_example_keeps_its_lifetime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLIDEMILL_CLUSTER__SHARED_TEMP_DIRECTORY", str(tmp_path))
    config = load_cluster_config(example_config("slurm"))
    assert isinstance(config, SlurmClusterConfig) and config.gpu is not None
    lifetimes = pool_lifetime("cpu", config.cpu)
    assert lifetimes is not None and lifetimes[0] == lifetimes[1] == Lifetime(230 * 60, 5 * 60)
    assert cpu_job_kwargs(config)["worker_extra_args"] == config.cpu.worker_extra_args  # as written
    assert pool_lifetime("gpu", config.gpu) is None
    assert gpu_job_kwargs(config)["worker_extra_args"] == ["--resources", "GPU=1"]


# ---------------------------------------------------------------------------------------------
# the scheduler plugin


class _Fake:
    """Just what `LifetimeFit` reads of a scheduler (its workers' resources, which worker a task
    is processing on), with a clock the test moves."""

    def __init__(self) -> None:
        self.workers: dict[str, Any] = {}
        self.tasks: dict[str, Any] = {}
        self.now = 1000.0

    def join(self, fit: LifetimeFit, worker: str, resources: dict[str, float]) -> None:
        self.workers[worker] = type("WS", (), {"resources": resources, "address": worker})()
        fit.add_worker(cast(Any, self), worker)

    def give(self, fit: LifetimeFit, key: str, worker: str) -> None:
        self.tasks[key] = type("TS", (), {"processing_on": self.workers[worker]})()
        fit.transition(key, "waiting", "processing", stimulus_id="test")

    def finish(self, fit: LifetimeFit, key: str, worker: str, compute_s: float) -> None:
        self.now += compute_s
        startstops = [{"action": "compute", "start": 5.0, "stop": 5.0 + compute_s}]
        fit.transition(
            key, "processing", "memory", stimulus_id="test", worker=worker, startstops=startstops
        )


def test_the_plugin_raises_the_lifetime_of_later_jobs_once_workers_need_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = _Fake()
    cpu_lives: list[Lifetime] = []
    gpu_lives: list[Lifetime] = []

    def cpu(resources: Mapping[str, float]) -> bool:
        return not resources.get("GPU")

    def gpu(resources: Mapping[str, float]) -> bool:
        return bool(resources.get("GPU"))

    pools = [
        PoolLifetime("pool 'cpu'", Lifetime(60), 600, cpu, cpu_lives.append),
        PoolLifetime("pool 'gpu'", Lifetime(90, 10), 600, gpu, gpu_lives.append),
    ]
    fit = LifetimeFit(cast(Any, fake), pools, clock=lambda: fake.now)
    fake.join(fit, "cpu-1", {})
    fake.join(fit, "gpu-1", {"GPU": 1})
    fake.give(fit, "a", "cpu-1")
    fake.now += 3  # loading the model
    fake.finish(fit, "a", "cpu-1", 2)  # then a 2 s task: 4 × (5 s + 2 s) is under the floor
    assert fit.paces[0] == Pace(first_task_s=5, task_s=2) and not cpu_lives
    fake.give(fit, "b", "cpu-1")
    with caplog.at_level(logging.INFO):
        fake.finish(fit, "b", "cpu-1", 20)  # a 20 s task: new jobs get 4 × (5 s + 20 s)
    assert cpu_lives == [Lifetime(100, 0)] and fit.current == [Lifetime(100), Lifetime(90, 10)]
    assert caplog.messages == [
        "pool 'cpu': workers took up to 25.0 s to start and finish a task; new jobs get "
        "--lifetime 100s --lifetime-stagger 0s"
    ]
    assert caplog.records[0].levelno == logging.WARNING  # the first raise of a pool
    fake.give(fit, "c", "cpu-1")
    fake.finish(fit, "c", "cpu-1", 10)  # shorter than the longest: nothing changes
    assert len(cpu_lives) == 1
    # a GPU worker given work that retires 30 s later without finishing any: the GPU pool's
    # workers need more than 30 s
    fake.give(fit, "d", "gpu-1")
    fake.now += 30
    fit.remove_worker(cast(Any, fake), "gpu-1", stimulus_id="test")
    assert fit.paces[1] == Pace(cut_short_s=30) and gpu_lives == [Lifetime(130, 10)]
    # past what the walltime allows: capped, with a warning
    fake.join(fit, "gpu-2", {"GPU": 1})
    fake.give(fit, "e", "gpu-2")
    fake.now += 1000
    caplog.clear()
    fit.remove_worker(cast(Any, fake), "gpu-2", stimulus_id="test")
    assert gpu_lives[-1] == Lifetime(600 - WALLTIME_MARGIN_S, 0)
    assert (
        "pool 'gpu': workers need 1000 s to start and finish a task, more than its walltime"
        in caplog.text
    )
    # a task finished on a worker the plugin does not know changes nothing
    fake.finish(fit, "f", "gone", 500)
    assert len(cpu_lives) == 1 and len(gpu_lives) == 2


class SlowStart(WorkerPlugin):
    """Stands in for loading a model: `delay_s` as a worker joins, before it takes work."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def setup(self, worker: Worker) -> None:
        await asyncio.sleep(self.delay_s)


def _local_fit(cluster: LocalCluster) -> tuple[LifetimeFit, list[Lifetime]]:
    applied: list[Lifetime] = []
    pool = PoolLifetime("pool 'local'", Lifetime(60), 3600, lambda r: True, applied.append)
    assert cluster.scheduler is not None
    fit = LifetimeFit(cluster.scheduler, [pool])
    fit.add_to(cluster)
    return fit, applied


def _poll(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_on_a_real_cluster_the_plugin_measures_loading_and_tasks() -> None:
    with (
        LocalCluster(n_workers=0, processes=True, threads_per_worker=1,
                     dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        fit, applied = _local_fit(cluster)
        client.register_plugin(SlowStart(1.5))
        futures = client.map(time.sleep, [0.3] * 3, pure=False)  # work waits for a worker
        cluster.scale(1)
        client.gather(futures)
        _poll(lambda: fit.paces[0].task_s > 0)
        pace = fit.paces[0]
    # the worker's start (the plugin's 1.5 s) and its first task, then its longest task
    assert pace.first_task_s >= 1.5 + 0.3 and 0.3 <= pace.task_s < pace.first_task_s
    assert pace.cut_short_s == 0 and not applied  # 4 × ~2 s is under the floor


@pytest.mark.timeout(120)
def test_on_a_real_cluster_a_worker_retired_before_any_work_counts_as_cut_short() -> None:
    # dask's own behaviour, the bug this guards against: a lifetime (1 s) shorter than the start
    # (3 s) retires the worker with its tasks unfinished, and they wait for the next worker
    with (
        LocalCluster(n_workers=0, processes=True, threads_per_worker=1,
                     dashboard_address="127.0.0.1:0", lifetime="1s") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        fit, _ = _local_fit(cluster)
        client.register_plugin(SlowStart(3))
        futures = client.map(time.sleep, [0.1] * 2, pure=False)
        cluster.scale(1)
        _poll(lambda: fit.paces[0].cut_short_s > 0)
        assert not any(f.done() for f in futures)
        pace = fit.paces[0]
    assert 0 < pace.cut_short_s < 3 and pace.first_task_s == 0 and pace.task_s == 0
