"""`slidemill bench --many N`: what one slide costs beyond its pixels. N links to the same small
slide go through the whole pipeline as one batch; the figures are seconds per slide, the CPU
seconds the workers and the client spend per slide, the scheduler's tasks per slide, the client's
peak memory and the time to the first result."""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from rich.console import Console
from rich.table import Table

from slidemill.cluster import nanny_environ
from slidemill.pipeline.errors import PipelineError
from slidemill.pipeline.graph import BatchHooks, run_batch
from slidemill.schemas import NannyEnv, RunSpec, SlideResult


@dataclass(frozen=True, slots=True)
class ManyRun:
    """One batch of N links to one slide."""

    n: int
    """Slides in the batch."""
    seconds: float
    """Wall time of the batch, cluster up and warm."""
    tasks: int
    """Tasks the scheduler ran to completion."""
    peak_rss_mib: float
    """Peak resident memory of the client's process (which holds the LocalCluster's scheduler
    too) during the batch."""
    start_rss_mib: float
    """Its resident memory when the batch started."""
    first_result_s: float
    """Seconds from the batch's start to its first published slide."""
    worker_cpu_s: float = 0.0
    """CPU seconds (user and system) the worker processes spent during the batch."""
    client_cpu_s: float = 0.0
    """CPU seconds of the client's process (which holds the scheduler too) during the batch."""

    @property
    def per_slide(self) -> float:
        return self.seconds / self.n


class _TaskCount(SchedulerPlugin):
    """Counts tasks that finish (in memory or erred) on the scheduler it is added to."""

    name = "slidemill-task-count"

    def __init__(self) -> None:
        self.done = 0

    def transition(self, key: object, start: str, finish: str, *args: object, **kw: object) -> None:
        if finish in ("memory", "erred"):
            self.done += 1


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes `pids` have spent so far."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


class _PeakRss:
    """This process's peak resident memory, sampled on a thread."""

    def __init__(self, period_s: float = 0.05) -> None:
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def link_slides(slide: Path, n: int, folder: Path) -> Path:
    """`folder` holding exactly `n` symbolic links to `slide` (slide-00000.svs, …)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for k in range(n):
        (folder / f"slide-{k:05d}{slide.suffix}").symlink_to(slide.resolve())
    return folder


def many_run(
    slide: Path, bundle: Path, n: int, work: Path, cluster: LocalCluster, tasks: _TaskCount
) -> ManyRun:
    """Run `n` links to `slide` through the whole pipeline on `cluster` as one batch."""
    folder = link_slides(slide, n, work / f"many-{n}")
    out = work / f"many-{n}-out"
    shutil.rmtree(out, ignore_errors=True)
    first: list[float] = []
    t0 = time.perf_counter()

    def on_result(result: SlideResult) -> None:
        if not first:
            first.append(time.perf_counter() - t0)

    spec = RunSpec(
        slides=(folder,),
        model=bundle,
        out=out,
        scheduler=cluster.scheduler_address,
        force=True,
    )
    before = tasks.done
    me = psutil.Process()
    start_rss = me.memory_info().rss
    with Client(cluster) as client, _PeakRss() as peak:
        # CPU time, unlike wall time, hardly depends on what else a shared machine runs
        workers = list(client.run(os.getpid).values())
        worker_cpu, client_cpu = _cpu_seconds(workers), _cpu_seconds([me.pid])
        t0 = time.perf_counter()
        report = run_batch(spec, hooks=BatchHooks(client=client, on_result=on_result))
        seconds = time.perf_counter() - t0
        worker_cpu = _cpu_seconds(workers) - worker_cpu
        client_cpu = _cpu_seconds([me.pid]) - client_cpu
    failed = [r for r in report.results if r.status != "done"]
    if failed:
        raise PipelineError(f"bench --many: {len(failed)} slides failed: {failed[0].error}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return ManyRun(
        n=n,
        seconds=seconds,
        tasks=tasks.done - before,
        peak_rss_mib=peak.peak / 2**20,
        start_rss_mib=start_rss / 2**20,
        first_result_s=first[0] if first else seconds,
        worker_cpu_s=worker_cpu,
        client_cpu_s=client_cpu,
    )


def many_runs(slide: Path, bundle: Path, counts: tuple[int, ...], work: Path) -> list[ManyRun]:
    """`many_run` for each N in `counts` on one LocalCluster of this machine's cores (one
    thread each), warmed up by one slide first."""
    workers = max(1, os.cpu_count() or 1)
    tasks = _TaskCount()
    with (
        nanny_environ(NannyEnv().environ(1)),
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cluster,
    ):
        cluster.scheduler.add_plugin(tasks)
        many_run(slide, bundle, 1, work, cluster, tasks)  # the workers load the model
        return [many_run(slide, bundle, n, work, cluster, tasks) for n in counts]


def run_many_bench(slide: Path, counts: tuple[int, ...], console: Console, work: Path) -> None:
    """Measure and print (on `console`) the `--many` figures: batches of N links to `slide`
    with the tiny encoder."""
    from slidemill.workers import init_bundle

    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "tiny-256"
    if not bundle.exists():
        init_bundle(bundle, encoder="tiny_cnn", tile_px=256, mpp=0.5, seed=0)
    runs = many_runs(slide, bundle, tuple(sorted(set(counts))), work)
    table = Table(title=f"many slides: N links to {slide.name}, whole pipeline, one batch each")
    for col in ("N", "s", "s/slide", "s per extra slide", "worker CPU s/slide",
                "client CPU s/slide", "tasks/slide", "client peak MiB", "client at start MiB",
                "first result s"):  # fmt: skip
        table.add_column(col, justify="right")
    prev: ManyRun | None = None
    for r in runs:
        extra = (r.seconds - prev.seconds) / (r.n - prev.n) if prev is not None else None
        table.add_row(
            str(r.n), f"{r.seconds:.1f}", f"{r.per_slide:.3f}",
            "—" if extra is None else f"{extra:.3f}", f"{r.worker_cpu_s / r.n:.3f}",
            f"{r.client_cpu_s / r.n:.3f}", f"{r.tasks / r.n:.1f}",
            f"{r.peak_rss_mib:,.0f}", f"{r.start_rss_mib:,.0f}", f"{r.first_result_s:.2f}",
        )  # fmt: skip
        prev = r
    console.print(table)
    if len(runs) >= 2:
        a, b = runs[-2], runs[-1]
        console.print(
            f"  s/slide at N={b.n} / N={a.n}: {b.per_slide / a.per_slide:.2f} (target ≤ 1.2); "
            f"client peak memory N={b.n} / N={a.n}: {b.peak_rss_mib / a.peak_rss_mib:.2f} "
            "(flat: ≈ 1)",
            highlight=False,
        )
