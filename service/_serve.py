"""`slidemill serve`: the ledger, the runner on the cluster, and the API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from slidemill.cluster import load_cluster_config
from slidemill.service._app import create_app
from slidemill.service._lease import ServiceLease
from slidemill.service._runner import BatchRunner
from slidemill.service._scheduler import Scheduler
from slidemill.service._settings import ServiceSettings
from slidemill.service.ledger import Ledger, LedgerInUseError

log = logging.getLogger(__name__)


def serve(settings: ServiceSettings) -> None:
    """Run the service until SIGINT or SIGTERM; batches left running resume at the next start.

    Refuses, before binding anything, settings a lab must not run with (`settings.check`), and
    a ledger another live service works (`LedgerInUseError`, naming it): the lease is taken
    before anything touches the batches, since starting resumes those left running."""
    settings.check()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    cluster = load_cluster_config(
        settings.cluster_file, scheduler=settings.scheduler, n_workers=settings.n_workers
    )
    ledger = Ledger.open(settings.db_url)
    try:
        servers: list[uvicorn.Server] = []

        def stop_serving() -> None:  # another service took the ledger over: leave it to it
            for server in servers:
                server.should_exit = True

        lease = ServiceLease(ledger, on_lost=stop_serving)
        lease.acquire()
        try:
            runner = BatchRunner(ledger, cluster, settings.max_running, settings.allow_roots)
            scheduler = Scheduler(ledger, settings.allow_roots, runner)
            app = create_app(settings, ledger, runner, scheduler, lease)
            config = uvicorn.Config(
                app, host=settings.host, port=settings.port, log_level="info", access_log=False
            )
            servers.append(uvicorn.Server(config))
            lease.start()
            servers[0].run()
        finally:
            lease.release()
        if lease.lost is not None:
            raise LedgerInUseError(f"ledger {ledger.url}: {lease.lost}; this service stopped")
    finally:
        ledger.close()
