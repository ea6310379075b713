"""Surviving faults and resuming: real LocalCluster / dask worker processes, real kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from slidemill.pipeline.graph import BatchHooks, run_batch
from slidemill.pipeline.synth import write_slide
from slidemill.schemas import RunSpec
from slidemill.workers import init_bundle
from tests.helpers import StoreView, synthetic

DEADLINE_S = 120


@pytest.fixture(scope="module")
def fine_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny CNN at 0.5 µm/px, 64 px: ~500 tiles on a generated slide, so runs last a while."""
    out = tmp_path_factory.mktemp("fine") / "model"
    init_bundle(out, encoder="tiny_cnn", tile_px=64, mpp=0.5, seed=2)
    return out


@pytest.fixture(scope="module")
def big_slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    write_slide(folder / "one.svs", synthetic(), kind="svs")
    write_slide(folder / "two.tiff", synthetic(), kind="tiff")
    return folder


def scores(out: Path, sid: str) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(out / sid / "slide.zarr" / "scores"))[...])


def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def markers(out: Path) -> list[Path]:
    return sorted((out / ".partial").glob("*/progress/tile-*"))


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "slidemill.cli", "run", *map(str, args), "--no-progress"]


@pytest.fixture(scope="module")
def clean_run(
    tmp_path_factory: pytest.TempPathFactory, big_slides: Path, fine_bundle: Path
) -> Path:
    out = tmp_path_factory.mktemp("clean")
    args = (big_slides, "--model", fine_bundle, "--out", out, "--tiles-per-task", "32")
    proc = subprocess.run(cli(*args, "--workers", "2"), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_interrupted_run_resumes_only_unfinished_chunks(
    tmp_path: Path, big_slides: Path, fine_bundle: Path, clean_run: Path
) -> None:
    out = tmp_path / "run"
    args: tuple[str | Path, ...] = (big_slides, "--model", fine_bundle, "--out", out)
    args += ("--tiles-per-task", "32", "--keep-tiles")  # kept: chunks are compared afterwards
    # the whole command, its LocalCluster and workers die at once, as on a power cut
    proc = subprocess.Popen(
        cli(*args, "--workers", "1"),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(markers(out)) >= 3, "three finished tile blocks")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = markers(out)
    assert not (out / "one").exists() or not (out / "two").exists(), "finished before the kill"
    chunk_times = {}
    for marker in done_before:
        start = int(marker.name.split("-")[1])
        chunk = (
            marker.parents[1] / "slide.zarr" / "tiles" / "c" / str(start // 32) / "0" / "0" / "0"
        )
        chunk_times[chunk] = chunk.stat().st_mtime_ns
    resumed = subprocess.run(
        cli(*args, "--workers", "2"), capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # blocks finished before the kill were not rewritten; the rest were
    for chunk, mtime in chunk_times.items():
        sid = chunk.parents[6].name
        moved = out / sid / chunk.relative_to(chunk.parents[6])
        assert moved.stat().st_mtime_ns == mtime
    for sid in ("one", "two"):
        np.testing.assert_array_equal(scores(out, sid), scores(clean_run, sid))
        assert not (out / sid / "progress").exists() and not (out / sid / "plan.json").exists()
    assert not (out / ".partial").exists()


def test_done_slides_are_kept_and_changes_redo_them(
    tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for src, name in (("synth-svs.svs", "one.svs"), ("synth-tiff.tiff", "two.tiff")):
        shutil.copy(slides_dir / src, slides / name)
    out = tmp_path / "run"
    args: list[str | Path] = [slides, "--model", tiny_bundle, "--out", out]
    args += ["--tiles-per-task", "16"]
    first = subprocess.run(
        cli(*args, "--workers", "2"), capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr[-3000:]
    first_scores = scores(out, "one")
    # by default a published store keeps no tile pixels, only what was computed from them
    root = StoreView(out / "one" / "slide.zarr")
    assert not {"tiles", "tile_jpeg", "tile_jpeg_rows"} & root.array_names()
    assert {"coords", "features", "scores", "heatmap"} <= root.array_names()
    before = {sid: (out / sid / "result.json").stat().st_mtime_ns for sid in ("one", "two")}
    again = subprocess.run(cli(*args), capture_output=True, text=True, check=False)
    assert again.returncode == 0
    assert "dashboard" not in again.stderr  # nothing to run: no cluster was started
    assert "kept 2 slide(s)" in again.stderr
    assert {sid: (out / sid / "result.json").stat().st_mtime_ns for sid in before} == before
    # what a caller's progress display hears: the count first, then each kept slide
    heard: list[object] = []
    hooks = BatchHooks(
        on_start=lambda n, kept: heard.append((n, kept)),
        on_result=lambda r: heard.append((r.slide_id, r.status)),
    )
    run_batch(RunSpec(slides=(slides,), model=tiny_bundle, out=out), hooks=hooks)
    assert heard == [(2, 2), ("one", "done"), ("two", "done")]
    # a touched file is a changed file: only that slide is redone
    os.utime(slides / "two.tiff")
    third = subprocess.run(
        cli(*args, "--workers", "1"), capture_output=True, text=True, check=False
    )
    assert third.returncode == 0
    assert (out / "one" / "result.json").stat().st_mtime_ns == before["one"]
    assert (out / "two" / "result.json").stat().st_mtime_ns != before["two"]
    forced = subprocess.run(
        cli(*args, "--workers", "1", "--force"), capture_output=True, text=True, check=False
    )
    assert forced.returncode == 0
    assert (out / "one" / "result.json").stat().st_mtime_ns != before["one"]
    np.testing.assert_array_equal(scores(out, "one"), first_scores)


def test_a_killed_worker_loses_nothing(
    external_cluster: str,
    tmp_path: Path,
    big_slides: Path,
    fine_bundle: Path,
    clean_run: Path,
) -> None:
    out = tmp_path / "run"
    args = (big_slides, "--model", fine_bundle, "--out", out, "--tiles-per-task", "32")
    with Client(external_cluster) as client:
        pids = client.run(os.getpid)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    victim = next(pid for addr, pid in pids.items() if names[addr] == "cpu-0")
    proc = subprocess.Popen(
        cli(*args, "--scheduler", external_cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for(lambda: len(markers(out)) >= 2, "two finished tile blocks")
    os.kill(victim, signal.SIGKILL)  # the nanny starts a new worker; its tasks are redone
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err.decode()[-3000:]
    for sid in ("one", "two"):
        assert json.loads((out / sid / "result.json").read_text())["status"] == "done"
        np.testing.assert_array_equal(scores(out, sid), scores(clean_run, sid))
    with Client(external_cluster) as client:
        client.wait_for_workers(2, timeout=DEADLINE_S)
        assert victim not in client.run(os.getpid).values()


class AttemptCounter(SchedulerPlugin):
    """Counts how often each task starts processing."""

    def __init__(self) -> None:
        self.starts: Counter[str] = Counter()

    def transition(self, key: object, start: str, finish: str, *args: object, **kw: object) -> None:
        if finish == "processing":
            self.starts[str(key)] += 1


@pytest.fixture()
def local_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        yield cluster


def test_failing_task_is_retried_a_bounded_number_of_times_then_its_slide_fails_alone(
    local_cluster: LocalCluster, tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> None:
    # a slide whose level-1 tile data (what 2 µm/px tiles are read from) is zeroed in the middle
    # of the tissue: planning (from level 2) succeeds, tiling fails every time
    bad = write_slide(tmp_path / "corrupt.tiff", synthetic(), kind="tiff", downsamples=(1, 2, 8))
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[1]
        offset, count = page.dataoffsets[7], page.databytecounts[7]  # row 1, col 1: tissue
    with bad.open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * count)
    counter = AttemptCounter()
    assert local_cluster.scheduler is not None
    local_cluster.scheduler.add_plugin(counter)
    spec = RunSpec(
        slides=(bad, slides_dir / "synth-svs.svs"),
        model=tiny_bundle,
        out=tmp_path / "out",
        scheduler=local_cluster.scheduler_address,
        tiles_per_task=8,
        retries=2,
    )
    report = run_batch(spec)
    status = {r.slide_id: r for r in report.results}
    assert status["synth-svs"].status == "done"
    failed = status["corrupt"]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.startswith(str(bad)) and "cannot decode" in failed.error
    tile_attempts = [n for k, n in counter.starts.items() if k.startswith("tile-corrupt-")]
    assert max(tile_attempts) == 3  # one try and two retries
    assert all(n == 1 for k, n in counter.starts.items() if k.startswith("tile-synth-svs-"))
