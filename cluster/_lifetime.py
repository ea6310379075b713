"""Worker lifetimes on a batch system: long enough to do work, over before the walltime.

`dask worker --lifetime` retires a worker that long after it starts, and the task it is running
goes to another worker without counting as a failure (the retirement was expected). A lifetime
shorter than a worker needs to start, load the model and finish a task therefore does no work at
all, and a batch on such workers never ends: every task is handed on forever. `fit_lifetime` is
the pure decision (the configured lifetime raised to a floor and to a multiple of what workers
were seen to need, and kept under the walltime); `LifetimeFit`, a scheduler plugin, measures
what workers need while a batch runs and hands a raised lifetime to the jobs started afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from distributed import Scheduler, SchedulerPlugin

log = logging.getLogger(__name__)

LIFETIME_FLOOR_S = 60.0
"""The shortest lifetime a worker gets, before anything is measured: time, on a busy node, to
start Python, import torch, load a model and finish a task. Below it a worker can retire before
it has done any work, its task goes to the next worker, which retires in turn, and the batch
never ends."""

WALLTIME_MARGIN_S = 60.0
"""How long before its job's walltime a worker retires at the latest: the job's start-up before
the worker's clock starts (Python, imports from shared storage) and the retirement itself
(handing results to other workers, exiting), so that SLURM never kills a worker mid-task."""

LIFETIME_MULTIPLE = 4.0
"""A worker's lifetime is at least this many times what workers were seen to need to start and
finish a task, so that start-up and the task cut off at retirement are at most a quarter of
its life."""


@dataclass(frozen=True, slots=True)
class Lifetime:
    """A pool's `dask worker --lifetime` and `--lifetime-stagger`, in seconds."""

    duration_s: float
    """Time from a worker's start to its retirement, on average."""
    stagger_s: float = 0.0
    """Each worker's lifetime is drawn uniformly within ± this of `duration_s`, so a pool's
    workers do not all retire at once."""

    @property
    def shortest_s(self) -> float:
        """The shortest lifetime a worker may draw."""
        return self.duration_s - self.stagger_s

    @property
    def longest_s(self) -> float:
        """The longest lifetime a worker may draw."""
        return self.duration_s + self.stagger_s

    def args(self) -> list[str]:
        """As `dask worker` arguments."""
        return [
            "--lifetime",
            _seconds(self.duration_s),
            "--lifetime-stagger",
            _seconds(self.stagger_s),
        ]

    def __str__(self) -> str:
        return " ".join(self.args())


def _seconds(value: float) -> str:
    """Seconds as `dask worker` reads them, without an exponent (`12s`, `12.5s`)."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def fit_lifetime(configured: Lifetime, walltime_s: float, needed_s: float = 0.0) -> Lifetime:
    """The lifetime for new workers: `configured`, its shortest draw raised to at least the
    floor and `LIFETIME_MULTIPLE` × `needed_s` (what workers were seen to need to start and
    finish a task), its longest draw ending `WALLTIME_MARGIN_S` before the walltime; the
    walltime wins over `needed_s`. A lifetime long enough keeps its value and its stagger
    shrinks to fit; one too short rises by its stagger as well, so that workers still retire
    spread out rather than all at once.

    Raises `ValueError` when the walltime cannot fit the floor and the margin.
    """
    high = walltime_s - WALLTIME_MARGIN_S
    if high < LIFETIME_FLOOR_S:
        raise ValueError(
            f"a walltime of {walltime_s:g} s cannot fit a lifetime of {LIFETIME_FLOOR_S:g} s "
            f"ending {WALLTIME_MARGIN_S:g} s before it"
        )
    low = min(max(LIFETIME_FLOOR_S, LIFETIME_MULTIPLE * needed_s), high)
    if configured.duration_s >= low:
        duration = min(configured.duration_s, high)
        stagger = max(0.0, min(configured.stagger_s, duration - low, high - duration))
    else:
        stagger = max(0.0, min(configured.stagger_s, (high - low) / 2))
        duration = low + stagger
    return Lifetime(duration, stagger)


def with_lifetime(args: Sequence[str], lifetime: Lifetime) -> list[str]:
    """`dask worker` arguments `args` with their lifetime options replaced by `lifetime`'s,
    where the first of them was (appended when there was none)."""
    kept: list[str] = []
    at: int | None = None
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        option = arg.split("=", 1)[0]
        if option in ("--lifetime", "--lifetime-stagger"):
            at = len(kept) if at is None else at
            skip = "=" not in arg  # its value is the next argument
            continue
        kept.append(arg)
    at = len(kept) if at is None else at
    return [*kept[:at], *lifetime.args(), *kept[at:]]


@dataclass(frozen=True, slots=True)
class Pace:
    """What a pool's workers were seen to need, in seconds."""

    first_task_s: float = 0.0
    """Longest time from a worker being given work to its first finished task. Worker plugins
    (the one that loads the model) run as a worker joins, so for a worker that joined while
    work waited this includes loading the model."""
    task_s: float = 0.0
    """Longest task."""
    cut_short_s: float = 0.0
    """Longest a worker held work and left without finishing any (its lifetime ran out first):
    workers need more than that."""

    @property
    def needed_s(self) -> float:
        """What a new worker needs to start and finish any task (an upper bound): the longest
        start seen, plus the longest task."""
        return max(self.first_task_s, self.cut_short_s) + self.task_s


def refit(
    configured: Lifetime, walltime_s: float, current: Lifetime, pace: Pace
) -> Lifetime | None:
    """The lifetime new jobs should get now, or None to keep `current`: lifetimes only grow
    during a batch (a measurement never shortens them)."""
    fitted = fit_lifetime(configured, walltime_s, pace.needed_s)
    return fitted if fitted.shortest_s > current.shortest_s else None


@dataclass(frozen=True, slots=True)
class PoolLifetime:
    """A pool whose workers retire through `--lifetime`, as `LifetimeFit` watches it."""

    name: str
    """How messages name it, e.g. "SLURM pool 'cpu'"."""
    configured: Lifetime
    """The lifetime its first jobs got (already fitted to the floor and the walltime)."""
    walltime_s: float
    """Its jobs' time limit."""
    is_member: Callable[[Mapping[str, float]], bool]
    """Whether a worker with these resources is one of its workers."""
    apply: Callable[[Lifetime], None]
    """Give the jobs it starts from now on this lifetime (called on the scheduler's loop)."""


async def _add_plugin(scheduler: Scheduler, plugin: SchedulerPlugin) -> None:
    scheduler.add_plugin(plugin)


def _compute_s(startstops: Iterable[Mapping[str, Any]]) -> float:
    return sum(s["stop"] - s["start"] for s in startstops if s.get("action") == "compute")


class LifetimeFit(SchedulerPlugin):
    """Measures, on the scheduler, how long each pool's workers take from being given work to
    finishing their first task, how long tasks take, and how long workers that left without
    finishing any had held work; raises the pool's lifetime for new jobs when that calls for
    it (`refit`). Its hooks run on the scheduler's event loop and only read its state."""

    name = "slidemill-lifetime-fit"

    def __init__(
        self,
        scheduler: Scheduler,
        pools: Sequence[PoolLifetime],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.pools = tuple(pools)
        self.paces = [Pace() for _ in self.pools]
        self.current = [p.configured for p in self.pools]
        self._pool_of: dict[str, int] = {}
        self._busy_since: dict[str, float] = {}
        self._worked: set[str] = set()
        self._warned: set[int] = set()
        self._raised: set[int] = set()

    def add_to(self, cluster: Any) -> None:
        """Add this plugin to `cluster`'s scheduler, `self.scheduler`, which runs in this
        process (as dask-jobqueue's and LocalCluster's do): on its event loop, where the
        hooks run. Before any worker joins, so that it sees every one."""
        cluster.sync(_add_plugin, self.scheduler, self)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        resources = ws.resources if ws is not None else {}
        for i, pool in enumerate(self.pools):
            if pool.is_member(resources):
                self._pool_of[worker] = i
                return

    def transition(
        self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any
    ) -> None:
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            ws = ts.processing_on if ts is not None else None
            if ws is not None and ws.address in self._pool_of:
                self._busy_since.setdefault(ws.address, self.clock())
        elif start == "processing" and finish == "memory":
            worker = kwargs.get("worker")
            if not isinstance(worker, str) or worker not in self._pool_of:
                return
            i = self._pool_of[worker]
            pace = self.paces[i]
            task_s = _compute_s(kwargs.get("startstops") or ())
            if task_s > pace.task_s:
                pace = replace(pace, task_s=task_s)
            if worker not in self._worked:
                self._worked.add(worker)
                since = self._busy_since.get(worker)
                if since is not None:
                    first = self.clock() - since
                    pace = replace(pace, first_task_s=max(pace.first_task_s, first))
            self._update(i, pace)

    def remove_worker(
        self, scheduler: Scheduler, worker: str, *, stimulus_id: str, **kwargs: Any
    ) -> None:
        i = self._pool_of.pop(worker, None)
        since = self._busy_since.pop(worker, None)
        worked = worker in self._worked
        self._worked.discard(worker)
        if i is None or since is None or worked:
            return
        held = self.clock() - since
        self._update(i, replace(self.paces[i], cut_short_s=max(self.paces[i].cut_short_s, held)))

    def _update(self, i: int, pace: Pace) -> None:
        if pace == self.paces[i]:
            return
        self.paces[i] = pace
        pool = self.pools[i]
        if i not in self._warned and pace.needed_s > pool.walltime_s - WALLTIME_MARGIN_S:
            self._warned.add(i)
            log.warning(
                "%s: workers need %.0f s to start and finish a task, more than its walltime "
                "allows; give its jobs a longer walltime",
                pool.name,
                pace.needed_s,
            )
        fitted = refit(pool.configured, pool.walltime_s, self.current[i], pace)
        if fitted is None:
            return
        self.current[i] = fitted
        pool.apply(fitted)
        # the first raise says the config's lifetime is too short in practice; later ones
        # follow slower workers
        log.log(
            logging.INFO if i in self._raised else logging.WARNING,
            "%s: workers took up to %.1f s to start and finish a task; new jobs get %s",
            pool.name,
            pace.needed_s,
            fitted,
        )
        self._raised.add(i)
