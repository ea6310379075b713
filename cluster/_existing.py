"""A scheduler that is already running: connect, and leave it running afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client

from slidemill.cluster._backend import Backend
from slidemill.schemas import ExistingClusterConfig


@contextmanager
def open_existing(config: ExistingClusterConfig) -> Iterator[Client]:
    """A client on the scheduler at `config.scheduler` or named by `config.scheduler_file`."""
    if config.scheduler_file is not None:
        client = Client(scheduler_file=str(config.scheduler_file), timeout=config.timeout)
    else:
        client = Client(config.scheduler, timeout=config.timeout)
    with client:
        yield client


EXISTING = Backend("existing", ExistingClusterConfig, open_existing)
