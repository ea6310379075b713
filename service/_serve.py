"""`slidemill serve`: the ledger, the runner on the cluster, and the API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from slidemill.cluster import load_cluster_config
from slidemill.service._app import create_app
from slidemill.service._runner import BatchRunner
from slidemill.service._scheduler import Scheduler
from slidemill.service._settings import ServiceSettings
from slidemill.service.ledger import Ledger

log = logging.getLogger(__name__)


def serve(settings: ServiceSettings) -> None:
    """Run the service until SIGINT or SIGTERM; batches left running resume at the next start.

    Refuses, before binding anything, settings a lab must not run with (`settings.check`)."""
    settings.check()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    cluster = load_cluster_config(
        settings.cluster_file, scheduler=settings.scheduler, n_workers=settings.n_workers
    )
    ledger = Ledger.open(settings.db_url)
    try:
        runner = BatchRunner(ledger, cluster, settings.max_running)
        scheduler = Scheduler(ledger, settings.allow_roots, runner)
        app = create_app(settings, ledger, runner, scheduler)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="info", access_log=False
        )
        uvicorn.Server(config).run()
    finally:
        ledger.close()
