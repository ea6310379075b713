"""Load a model once per worker process: a Dask WorkerPlugin plus a process-wide cache."""

from __future__ import annotations

import logging
from pathlib import Path
from threading import Lock

from distributed import Worker, WorkerPlugin

from slidemill.workers.errors import ModelBundleError
from slidemill.workers.models import LoadedModel, load_bundle

log = logging.getLogger(__name__)

_CACHE: dict[str, LoadedModel] = {}
_LOCK = Lock()


def get_model(bundle: str, sha256: str) -> LoadedModel:
    """The bundle `sha256` loaded in this process; loads it on first use.

    Tasks call this; with `ModelPlugin` registered the model is already there when the first
    task arrives, so no task pays for loading.
    """
    with _LOCK:
        model = _CACHE.get(sha256)
        if model is None:
            model = load_bundle(Path(bundle))
            if model.sha256 != sha256:
                raise ModelBundleError(
                    f"{bundle}: bundle changed during the run (id {model.sha256[:12]}…, "
                    f"expected {sha256[:12]}…)"
                )
            _CACHE[sha256] = model
            log.info("loaded model %s… on %s", sha256[:12], model.device)
        return model


class ModelPlugin(WorkerPlugin):
    """Loads a bundle when a worker starts (or joins later), on workers that will run inference.

    `resource`: when set, only workers declaring that resource (e.g. "GPU") load the model.
    """

    idempotent = True
    """Registering it again (a retry, a later batch with the same bundle id) keeps the one the
    scheduler has: its workers hold the model already."""

    def __init__(self, bundle: str, sha256: str, resource: str | None = None) -> None:
        self.bundle = bundle
        self.sha256 = sha256
        self.resource = resource
        self.name = f"slidemill-model-{sha256[:16]}"

    def setup(self, worker: Worker) -> None:
        if self.resource and self.resource not in worker.state.total_resources:
            return
        get_model(self.bundle, self.sha256)

    def teardown(self, worker: Worker) -> None:
        with _LOCK:
            _CACHE.pop(self.sha256, None)


def loaded_models() -> frozenset[str]:
    """The ids (manifest sha256) of the models this process holds, loaded by the plugin."""
    return frozenset(_CACHE)
