"""A scheduler that is already running: connect, and leave it running afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client

from slidemill.cluster._backend import Backend
from slidemill.cluster._security import existing_security
from slidemill.cluster.errors import ClusterConfigError
from slidemill.schemas import ExistingClusterConfig


def _address(config: ExistingClusterConfig) -> str:
    if config.scheduler is not None:
        return config.scheduler
    path = config.scheduler_file
    try:
        address = json.loads(path.read_text())["address"] if path is not None else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClusterConfigError(f"scheduler_file {path}: no scheduler address in it") from err
    if not isinstance(address, str):
        raise ClusterConfigError(f"scheduler_file {path}: no scheduler address in it")
    return address


@contextmanager
def open_existing(config: ExistingClusterConfig) -> Iterator[Client]:
    """A client on the scheduler at `config.scheduler` or named by `config.scheduler_file`:
    over TLS with the config's certificates for a tls:// scheduler; plain TCP only on loopback
    or where the config says `tls: false`."""
    address = _address(config)
    security = existing_security(address, config.tls, "the existing scheduler")
    with Client(address, timeout=config.timeout, security=security) as client:
        yield client


EXISTING = Backend("existing", ExistingClusterConfig, open_existing)
