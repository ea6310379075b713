"""Workers and schedulers lost at the worst moments, two runs on one folder, a corrupt bundle:
real `dask scheduler` / `dask worker` processes, real SIGKILLs, driven by the stages the
workers hold (`_hold.py`) rather than by sleeps. In every case the batch finishes, or every
slide fails with its one-line reason; `results.csv` is always written."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from distributed import Client

from slidemill.pipeline.graph import BatchReport, run_batch
from slidemill.schemas import RunSpec
from slidemill.schemas.layout import LOCK_FILE
from slidemill.workers import manifest_sha256, read_manifest
from tests.pipeline.graph.conftest import DEADLINE_S, DaskProcesses, wait_for

SLIDE_IDS = ("synth-svs", "synth-tiff")


def spec(slides: Path, model: Path, out: Path, **kw: Any) -> RunSpec:
    return RunSpec(slides=(slides,), model=model, out=out, tiles_per_task=16, **kw)


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "slidemill.cli", "run", *map(str, args), "--no-progress"]


def scores(out: Path, sid: str) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(out / sid / "slide.zarr" / "scores"))[...])


def csv_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open(newline="") as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


def assert_same_as(reference: Path, out: Path) -> None:
    rows = csv_rows(out)
    assert sorted(rows) == sorted(SLIDE_IDS)
    for sid in SLIDE_IDS:
        assert rows[sid]["status"] == "done", rows[sid]["error"]
        np.testing.assert_array_equal(scores(out, sid), scores(reference, sid))
    assert not (out / LOCK_FILE).exists()


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, tiny_bundle: Path
) -> Path:
    """The batch run without faults, on an embedded cluster."""
    out = tmp_path_factory.mktemp("reference")
    report = run_batch(spec(slides_dir, tiny_bundle, out, n_workers=1))
    assert report.n_failed == 0
    return out


@pytest.fixture()
def background() -> Iterator[ThreadPoolExecutor]:
    """Runs `run_batch` while the test kills things."""
    with ThreadPoolExecutor(1) as pool:
        yield pool


def finished(batch: Future[BatchReport]) -> BatchReport:
    return batch.result(timeout=DEADLINE_S)


def test_a_worker_killed_while_the_model_plugin_registers(
    dask_processes: DaskProcesses,
    tmp_path: Path,
    slides_dir: Path,
    tiny_bundle: Path,
    reference: Path,
) -> None:
    dask_processes.start_workers(2)
    dask_processes.arm("plugin")
    out = tmp_path / "out"
    run = subprocess.Popen(
        cli(slides_dir, "--model", tiny_bundle, "--out", out, "--tiles-per-task", "16",
            "--scheduler", dask_processes.address),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        victim = dask_processes.kill_held("plugin")  # its setup holds the client's call open
        _, err = run.communicate(timeout=DEADLINE_S)
    finally:
        run.kill()
    assert run.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert_same_as(reference, out)
    # the nanny's new worker joined after the call; the scheduler gave it the plugin
    name = f"slidemill-model-{manifest_sha256(read_manifest(tiny_bundle))[:16]}"
    with Client(dask_processes.address, timeout=30) as client:
        client.wait_for_workers(2, timeout=DEADLINE_S)
        plugins = client.run(lambda dask_worker: (os.getpid(), sorted(dask_worker.plugins)))
    assert victim not in {pid for pid, _ in plugins.values()}
    assert all(name in names for _, names in plugins.values())


def test_workers_killed_while_plans_mil_and_reduce_run(
    dask_processes: DaskProcesses,
    tmp_path: Path,
    slides_dir: Path,
    tiny_bundle: Path,
    reference: Path,
    background: ThreadPoolExecutor,
) -> None:
    dask_processes.start_workers(2)
    stages = ("plan", "mil", "reduce")
    dask_processes.arm(*stages)
    out = tmp_path / "out"
    batch = background.submit(
        run_batch, spec(slides_dir, tiny_bundle, out, scheduler=dask_processes.address)
    )
    killed = [dask_processes.kill_held(stage) for stage in stages]  # one kill per stage, in turn
    report = finished(batch)
    assert report.stopped is None and report.n_failed == 0
    assert len(killed) == 3
    assert_same_as(reference, out)


def test_every_worker_lost_then_a_new_one_joins(
    dask_processes: DaskProcesses,
    tmp_path: Path,
    slides_dir: Path,
    tiny_bundle: Path,
    reference: Path,
    background: ThreadPoolExecutor,
) -> None:
    dask_processes.start_workers(1, nanny=False)  # killed, it stays dead
    dask_processes.arm("plan")
    out = tmp_path / "out"
    batch = background.submit(
        run_batch, spec(slides_dir, tiny_bundle, out, scheduler=dask_processes.address)
    )
    dask_processes.kill_held("plan")
    wait_for(lambda: dask_processes.n_workers() == 0, "the scheduler to lose its only worker")
    assert not batch.done()
    dask_processes.start_workers(1)
    report = finished(batch)
    assert report.stopped is None and report.n_failed == 0
    assert_same_as(reference, out)


def test_no_workers_for_the_timeout_fails_every_unfinished_slide(
    dask_processes: DaskProcesses,
    tmp_path: Path,
    slides_dir: Path,
    tiny_bundle: Path,
    background: ThreadPoolExecutor,
) -> None:
    dask_processes.start_workers(1, nanny=False)
    dask_processes.arm("plan")
    out = tmp_path / "out"
    batch = background.submit(
        run_batch,
        spec(slides_dir, tiny_bundle, out, scheduler=dask_processes.address, worker_timeout_s=1),
    )
    dask_processes.kill_held("plan")
    report = finished(batch)
    assert report.stopped == "no workers for 1 s"
    rows = csv_rows(out)
    assert sorted(rows) == sorted(SLIDE_IDS)
    for r in report.results:
        assert r.status == "failed"
        assert r.error == f"{r.path}: no workers for 1 s"
        assert rows[r.slide_id]["error"] == r.error
        assert (out / r.slide_id / "result.json").is_file()
    assert not (out / LOCK_FILE).exists()


def test_a_lost_scheduler_fails_every_unfinished_slide_with_one_line(
    dask_processes: DaskProcesses, tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> None:
    dask_processes.start_workers(1)
    dask_processes.arm("plan")
    out = tmp_path / "out"
    run = subprocess.Popen(
        cli(slides_dir, "--model", tiny_bundle, "--out", out, "--tiles-per-task", "16",
            "--scheduler", dask_processes.address),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        dask_processes.held_pid("plan")
        dask_processes.scheduler.send_signal(signal.SIGKILL)
        _, err = run.communicate(timeout=DEADLINE_S)
    finally:
        run.kill()
    assert run.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    reason = f"lost the connection to the scheduler {dask_processes.address}"
    assert f"ERROR slidemill.pipeline.graph._batch: {reason}; every unfinished slide" in err
    rows = csv_rows(out)
    assert sorted(rows) == sorted(SLIDE_IDS)
    for row in rows.values():
        assert row["status"] == "failed" and row["error"] == f"{row['path']}: {reason}"
    assert not (out / LOCK_FILE).exists()


def test_a_second_run_on_the_same_folder_refuses_and_names_the_first(
    dask_processes: DaskProcesses,
    tmp_path: Path,
    slides_dir: Path,
    tiny_bundle: Path,
    reference: Path,
) -> None:
    dask_processes.start_workers(1)
    dask_processes.arm("plan")
    out = tmp_path / "out"
    args = (slides_dir, "--model", tiny_bundle, "--out", out, "--tiles-per-task", "16")
    first = subprocess.Popen(
        cli(*args, "--scheduler", dask_processes.address),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        dask_processes.held_pid("plan")  # the first run holds the lock and has work under way
        work = sorted(p.relative_to(out) for p in out.rglob("*"))
        second = subprocess.run(
            cli(*args, "--workers", "1"), capture_output=True, text=True, check=False
        )
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr  # no traceback, no dashboard: no cluster started
        assert f"in use by another slidemill run (PID {first.pid} on " in lines[0]
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == work  # nothing touched
        dask_processes.release("plan")
        _, err = first.communicate(timeout=DEADLINE_S)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    assert_same_as(reference, out)  # and the lock is gone: the next run may start


def test_a_corrupt_bundle_is_one_line_before_any_cluster(
    tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    weights = bundle / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    # nothing listens there: reaching for the cluster would be a different error, and slow
    proc = subprocess.run(
        cli(slides_dir, "--model", bundle, "--out", out, "--scheduler", "tcp://127.0.0.1:9"),
        capture_output=True, text=True, check=False, timeout=DEADLINE_S,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"{weights}: sha256" in lines[0] and "corrupt or replaced weights" in lines[0]
    assert not out.exists()
