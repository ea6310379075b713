"""Connect to a Dask cluster chosen by a validated config: the one entry the pipeline uses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client

from slidemill.cluster._backend import GPU_RESOURCE
from slidemill.cluster._config import ClusterSettings, load_cluster_config
from slidemill.cluster._registry import BACKENDS
from slidemill.schemas import AnyClusterConfig

log = logging.getLogger(__name__)


@contextmanager
def connect(config: AnyClusterConfig | ClusterSettings | None = None) -> Iterator[Client]:
    """A client on the cluster `config` describes, started (and afterwards stopped) by its
    backend. None: the config from the environment, else the embedded LocalCluster."""
    if config is None:
        config = load_cluster_config()
    elif isinstance(config, ClusterSettings):
        config = config.cluster
    backend = BACKENDS[config.backend]
    log.info("cluster backend: %s", backend.name)
    with backend.open(config) as client:
        yield client


def gpu_workers(client: Client) -> list[str]:
    """Addresses of workers that declare a `GPU` resource."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return [addr for addr, w in info.items() if w.get("resources", {}).get(GPU_RESOURCE, 0) > 0]
