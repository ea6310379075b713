"""Whether a batch system's worker pool started: the jobs of a pool that no worker of it has
joined for `start_timeout` stop the batch with the batch system's reason for each.

`start_failure` is the pure decision; `PoolWatch` asks the scheduler and `squeue`, and
`check_pools(client)` (called by the batch at each of its polls) runs the watches a backend
registered for that client.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed import Client

from slidemill.cluster.errors import PoolStartError

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
"""How often a watch asks the scheduler (and, once its time is up, squeue)."""


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """One job of a pool as the batch system reports it."""

    job_id: str
    """The batch system's job id."""
    state: str
    """PENDING, RUNNING, ...; "gone" when the batch system no longer lists it."""
    reason: str
    """Why it is in that state (SLURM's reason: BeginTime, Resources, PartitionDown, ...)."""


def start_failure(
    pool: str, waited_s: float, timeout_s: float, started: bool, jobs: Sequence[QueuedJob]
) -> str | None:
    """The one-line error of a pool that did not start, or None while it may still.

    `waited_s` counts from the first job the pool submitted; `started`: a worker of the pool
    has joined the scheduler at some point (a pool that started and then lost its workers is
    the batch's worker timeout's to judge, not this)."""
    if started or not jobs or waited_s < timeout_s:
        return None
    states = "; ".join(
        f"job {j.job_id} {j.state}" + (f" ({j.reason})" if j.reason and j.reason != "None" else "")
        for j in jobs
    )
    return f"{pool} did not start within {timeout_s:g} s, no worker joined: {states}"


def squeue(job_ids: Sequence[str]) -> list[QueuedJob]:
    """SLURM's view of `job_ids` (jobs it no longer lists come back as "gone")."""
    program = shutil.which("squeue")
    listed: dict[str, QueuedJob] = {}
    if program is not None:
        proc = subprocess.run(
            [program, "-h", "-t", "all", "-o", "%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                listed[parts[0]] = QueuedJob(*parts)
    return [listed.get(i, QueuedJob(i, "gone", "no longer queued; see its log")) for i in job_ids]


class PoolWatch:
    """Watches one pool of one cluster object until a worker of it joins."""

    def __init__(
        self,
        pool: str,
        cluster: Any,
        is_member: Callable[[Mapping[str, Any]], bool],
        timeout_s: float,
        queue: Callable[[Sequence[str]], list[QueuedJob]] = squeue,
    ) -> None:
        self.pool = pool
        self.cluster = cluster
        self.is_member = is_member
        self.timeout_s = timeout_s
        self.queue = queue
        self.started = False
        self.first_job_at: float | None = None
        self.next_check = 0.0

    def job_ids(self) -> list[str]:
        """Ids of the jobs the pool has submitted and not closed."""
        jobs = getattr(self.cluster, "workers", {}) or {}
        return [str(j.job_id) for j in list(jobs.values()) if getattr(j, "job_id", None)]

    def check(self, client: Client) -> None:
        """Raise `PoolStartError` when the pool's time to start is up."""
        now = time.monotonic()
        if self.started or now < self.next_check:
            return
        self.next_check = now + CHECK_EVERY_S
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        if any(self.is_member(w) for w in workers):
            self.started = True
            log.info("%s: a worker joined", self.pool)
            return
        ids = self.job_ids()
        if not ids:
            return
        if self.first_job_at is None:
            self.first_job_at = now
        waited = now - self.first_job_at
        if waited < self.timeout_s:
            return
        failure = start_failure(self.pool, waited, self.timeout_s, False, self.queue(ids))
        if failure is not None:
            raise PoolStartError(failure)


_WATCHES: dict[int, list[PoolWatch]] = {}


@contextmanager
def watching(client: Client, watches: Sequence[PoolWatch]) -> Iterator[None]:
    """Register `watches` for `client` while the context lasts."""
    _WATCHES[id(client)] = list(watches)
    try:
        yield
    finally:
        _WATCHES.pop(id(client), None)


def check_pools(client: Client) -> None:
    """Raise `PoolStartError` when a pool of the cluster behind `client` did not start in its
    time (a no-op for backends without pools). Cheap enough to call at every poll."""
    for watch in _WATCHES.get(id(client), ()):
        watch.check(client)
