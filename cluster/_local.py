"""The default backend: an embedded LocalCluster of worker processes on this machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from distributed import Client, LocalCluster

from slidemill.cluster._backend import Backend, nanny_environ
from slidemill.schemas import LocalClusterConfig


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def open_local(config: LocalClusterConfig) -> Iterator[Client]:
    """A new LocalCluster sized to this machine: by default one single-threaded worker process
    per core (the work is CPU-bound, and OpenSlide, JPEG decoding and torch each hold the GIL in
    places)."""
    n_workers = config.n_workers or cores()
    memory = config.memory_limit or int(psutil.virtual_memory().total * 0.9 / n_workers)
    with (
        nanny_environ(config.nanny_env.environ(config.threads_per_worker)),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=True,
            memory_limit=memory,
            dashboard_address=config.dashboard_address,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


LOCAL = Backend("local", LocalClusterConfig, open_local)
