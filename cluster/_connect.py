"""Connect to a Dask cluster chosen by a validated config: the one entry the pipeline uses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, WorkerPlugin
from distributed.comm.core import CommClosedError

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


def register_worker_plugin(client: Client, plugin: WorkerPlugin, attempts: int = 3) -> None:
    """Register `plugin` for the cluster's workers, present and future, tolerating workers that
    join, leave or die during the call.

    The scheduler keeps a plugin before it sends it to its workers, and sends it to every
    worker that joins later; a worker lost meanwhile fails only the sending, which the client
    sees as a lost connection. The call is then made again: an idempotent plugin
    (`plugin.idempotent`) is found already kept and not sent twice. An error raised by the
    plugin's own `setup` on a worker propagates."""
    for attempt in range(1, attempts + 1):
        try:
            client.register_plugin(plugin)
            return
        except Exception as err:
            if not _lost_connection(err) or attempt == attempts:
                raise
            log.warning(
                "a worker was lost while plugin %s was sent to the workers (%s: %s); "
                "workers that join later get it from the scheduler",
                getattr(plugin, "name", type(plugin).__name__),
                type(err).__name__,
                err,
            )


def _lost_connection(err: BaseException) -> bool:
    """Whether `err` is a connection to a scheduler or worker closing, refused or timing out
    (not an OSError of the work itself, such as a missing file)."""
    return isinstance(err, CommClosedError | ConnectionError | TimeoutError) or type(err) is OSError
