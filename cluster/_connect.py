"""Connect to a Dask cluster: an existing scheduler, or an embedded LocalCluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from distributed import Client, LocalCluster
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class ClusterSettings(BaseSettings):
    """Cluster choice; each field can come from the environment (`SLIDEMILL_SCHEDULER`, ...)."""

    model_config = SettingsConfigDict(env_prefix="SLIDEMILL_", frozen=True)

    scheduler: str | None = Field(
        default=None, description="tcp://HOST:PORT of an existing scheduler; None = embedded."
    )
    n_workers: int | None = Field(default=None, ge=1, description="Embedded: worker processes.")
    threads_per_worker: int = Field(default=1, ge=1, description="Embedded: threads each.")
    memory_limit: str | None = Field(
        default=None, description="Embedded: per-worker memory limit; None = RAM / workers."
    )
    dashboard_address: str = Field(default=":0", description="Embedded: dashboard bind address.")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def connect(settings: ClusterSettings) -> Iterator[Client]:
    """A client on the scheduler in `settings`, or on a new LocalCluster of worker processes
    sized to this machine (one single-threaded worker per core: the work is CPU-bound and
    OpenSlide, JPEG decoding and torch each hold the GIL in places)."""
    if settings.scheduler:
        with Client(settings.scheduler) as client:
            yield client
        return
    n_workers = settings.n_workers or _cores()
    memory = settings.memory_limit or int(psutil.virtual_memory().total * 0.9 / n_workers)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=settings.threads_per_worker,
            processes=True,
            memory_limit=memory,
            dashboard_address=settings.dashboard_address,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def gpu_workers(client: Client) -> list[str]:
    """Addresses of workers that declare a `GPU` resource."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return [addr for addr, w in info.items() if w.get("resources", {}).get("GPU", 0) > 0]
