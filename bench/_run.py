"""The pipeline part of `slidemill bench`: whole runs through a LocalCluster, 1 and 2 workers,
with the tiny encoder, and each worker's peak memory."""

from __future__ import annotations

import contextlib
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from distributed import Client, LocalCluster

from slidemill.cluster import nanny_environ
from slidemill.pipeline.errors import PipelineError
from slidemill.pipeline.graph import run_batch
from slidemill.schemas import NannyEnv, RunSpec


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """One whole run of one slide."""

    slide: str
    """Slide file name."""
    workers: int
    """Worker processes (one thread each)."""
    tiles: int
    """Tiles through the whole graph."""
    megapixels: float
    """Level-0 megapixels those tiles cover."""
    seconds: float
    """Wall time of the batch, cluster already up (workers started and warm)."""
    peak_rss_mib: float
    """Highest peak resident memory among the workers during the run."""
    baseline_rss_mib: float
    """Resident memory of a warm idle worker before the run (imports, model)."""


def _reset_peak() -> None:
    """Start the peak-memory count afresh (Linux: VmHWM), so the run's peak is not the import's:
    importing torch and friends peaks above a warm worker's resident memory."""
    with contextlib.suppress(OSError):  # elsewhere: the peak since the worker started
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float:
    try:
        status = Path("/proc/self/status").read_text()
        (line,) = (x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _warm_up() -> None:
    import slidemill.pipeline.graph  # noqa: F401  (torch, zarr, openslide: what the first task loads)


def pipeline_run(slide: Path, bundle: Path, workers: int, work: Path) -> PipelineRun:
    """Run one slide through a fresh LocalCluster of `workers` single-threaded workers with
    slidemill's worker environment; time the batch, not the cluster's start."""
    out = work / f"run-{slide.stem}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    with (
        nanny_environ(NannyEnv().environ(1)),
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm_up)
        client.run(_reset_peak)  # then the baseline, which the peak so counts
        baseline = max(client.run(_rss_mib).values())
        spec = RunSpec(
            slides=(slide,),
            model=bundle,
            out=out,
            scheduler=cluster.scheduler_address,
            force=True,
        )
        t0 = time.perf_counter()
        report = run_batch(spec)
        seconds = time.perf_counter() - t0
        peak = max(client.run(_peak_rss_mib).values())
    (result,) = report.results
    if result.status != "done":
        raise PipelineError(f"benchmark run failed: {result.error}")
    tiling = result.provenance.tiling
    mpp = result.provenance.slide_mpp
    assert tiling is not None and mpp is not None  # a done result always records both
    tile_level0 = tiling.tile_px * tiling.mpp / mpp
    shutil.rmtree(out, ignore_errors=True)
    return PipelineRun(
        slide=slide.name,
        workers=workers,
        tiles=result.n_tiles,
        megapixels=result.n_tiles * tile_level0**2 / 1e6,
        seconds=seconds,
        peak_rss_mib=peak,
        baseline_rss_mib=baseline,
    )
