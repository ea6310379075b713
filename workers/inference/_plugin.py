"""Load a model once per worker process: a Dask WorkerPlugin plus a process-wide cache."""

from __future__ import annotations

import logging
from pathlib import Path
from threading import Lock

from distributed import Worker, WorkerPlugin

from slidemill.workers.errors import ModelBundleError
from slidemill.workers.inference._quantize import Quantize, quantize_encoder
from slidemill.workers.models import LoadedModel, default_device, load_bundle

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, Quantize], LoadedModel] = {}
"""The models this process holds, by bundle id and quantisation: an int8 model is a load of its
own (its encoder quantised in place), never the float one changed under another task."""
_LOCK = Lock()
_WARNED: set[str] = set()
"""Bundles whose int8 request this process has already said it ignores (on a GPU)."""


def effective_quantize(requested: Quantize, device_type: str) -> Quantize:
    """What a worker whose models run on `device_type` does with `--quantize` (pure): int8 on a
    CPU; on any other device nothing, since torch's dynamic int8 layers have CPU kernels only
    and a GPU already encodes in bfloat16/float16 autocast."""
    return requested if device_type == "cpu" else "none"


def get_model(bundle: str, sha256: str, quantize: Quantize = "none") -> LoadedModel:
    """The bundle `sha256` loaded in this process, its encoder's linear layers in int8 with
    `quantize="int8"` (on a CPU; a GPU worker ignores it, with one warning); loads it on first
    use.

    Tasks call this; with `ModelPlugin` registered the model is already there when the first
    task arrives, so no task pays for loading.
    """
    with _LOCK:
        device = default_device()
        applied = effective_quantize(quantize, device.type)
        if applied != quantize and sha256 not in _WARNED:
            _WARNED.add(sha256)
            log.warning(
                "--quantize %s ignored on this %s worker: dynamic int8 runs on CPUs only, and "
                "the encoder runs in float16/bfloat16 autocast here",
                quantize,
                device.type,
            )
        model = _CACHE.get((sha256, applied))
        if model is None:
            model = load_bundle(Path(bundle), device)
            if model.sha256 != sha256:
                raise ModelBundleError(
                    f"{bundle}: bundle changed during the run (id {model.sha256[:12]}…, "
                    f"expected {sha256[:12]}…)"
                )
            if applied == "int8":
                n = quantize_encoder(model.encoder)
                log.info("quantised %d linear layers of model %s… to int8", n, sha256[:12])
            _CACHE[(sha256, applied)] = model
            log.info("loaded model %s… on %s", sha256[:12], model.device)
        return model


class ModelPlugin(WorkerPlugin):
    """Loads a bundle when a worker starts (or joins later), on workers that will run inference.

    `resource`: when set, only workers declaring that resource (e.g. "GPU") load the model.
    `quantize`: the run's `--quantize`, as `get_model` takes it.
    """

    idempotent = True
    """Registering it again (a retry, a later batch with the same bundle id) keeps the one the
    scheduler has: its workers hold the model already."""

    def __init__(
        self, bundle: str, sha256: str, resource: str | None = None, quantize: Quantize = "none"
    ) -> None:
        self.bundle = bundle
        self.sha256 = sha256
        self.resource = resource
        self.quantize: Quantize = quantize
        # an int8 run's plugin is another plugin: the scheduler keeps one per name
        suffix = "" if quantize == "none" else f"-{quantize}"
        self.name = f"slidemill-model-{sha256[:16]}{suffix}"

    def setup(self, worker: Worker) -> None:
        if self.resource and self.resource not in worker.state.total_resources:
            return
        get_model(self.bundle, self.sha256, self.quantize)

    def teardown(self, worker: Worker) -> None:
        with _LOCK:
            _CACHE.pop(
                (self.sha256, effective_quantize(self.quantize, default_device().type)), None
            )


def loaded_models() -> frozenset[str]:
    """The ids (manifest sha256) of the models this process holds, loaded by the plugin (float
    or int8)."""
    return frozenset(sha for sha, _ in _CACHE)


def loaded_quantized() -> frozenset[str]:
    """The ids of the models this process holds with their encoder in int8."""
    return frozenset(sha for sha, q in _CACHE if q == "int8")
