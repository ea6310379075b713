"""The service under load: batches of generated slides submitted at once to a real service
process on loopback, its API timed while it is busy, its ledger counts checked at the end."""

from __future__ import annotations

import secrets
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidemill.service.errors import ServiceError

_TOKEN = secrets.token_urlsafe(24)
"""The benchmark service's token: random, and long enough for the token rule."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What `load_benchmark` measured, in one run."""

    batches: int
    """Batches submitted at once."""
    slides: int
    """Slides in all."""
    seconds: float
    """From the first submission to the last batch's end."""
    submit_ms: tuple[float, ...]
    """Each submission's answer time."""
    read_ms: tuple[float, ...]
    """Each GET of a batch or of the list while the batches ran."""
    exact: bool
    """Every batch done with every slide done, in the ledger and in its results.csv."""

    @staticmethod
    def p(values: tuple[float, ...], q: float) -> float:
        """The q-quantile (0..1) of `values`."""
        return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def load_benchmark(work: Path, *, batches: int = 20, slides_per_batch: int = 10) -> LoadReport:
    """Generate slides and a tiny model in `work`, start `slidemill serve` there, submit the
    batches concurrently, time the API until all have ended, stop the service."""
    import httpx

    from slidemill.bench._served import served
    from slidemill.pipeline.synth import Ellipse, SyntheticSlide, write_slide
    from slidemill.workers import init_bundle

    shutil.rmtree(work, ignore_errors=True)
    slides = work / "slides"
    slides.mkdir(parents=True)
    first = slides / "slide-000.svs"
    write_slide(first, SyntheticSlide(1536, 1024, 0.5, (Ellipse(760, 500, 520, 380),), seed=1))
    for i in range(1, batches * slides_per_batch):
        shutil.copy(first, slides / f"slide-{i:03d}.svs")
    model = work / "model"
    init_bundle(model, encoder="tiny_cnn", tile_px=64, mpp=2.0, seed=0)
    headers = {"Authorization": f"Bearer {_TOKEN}"}
    reads: list[float] = []
    ended = threading.Event()
    ids: list[str] = []
    serve = ["serve", "--state", str(work / "state"), "--allow-root", str(work)]
    with (
        served(
            serve, "/api/health", work / "service.log", error=ServiceError,
            env={"SLIDEMILL_TOKEN": _TOKEN}, headers=headers,
        ) as service,
        httpx.Client(base_url=service.url, headers=headers, timeout=60) as client,
    ):  # fmt: skip
        all_slides = sorted(slides.iterdir())

        def submit(b: int) -> tuple[str, float]:
            part = all_slides[b * slides_per_batch : (b + 1) * slides_per_batch]
            body = {"slides": [str(p) for p in part], "model": str(model),
                    "out": str(work / "out" / f"batch-{b:02d}")}  # fmt: skip
            t0 = time.perf_counter()
            response = client.post("/api/batches", json=body)
            elapsed = (time.perf_counter() - t0) * 1e3
            response.raise_for_status()
            return response.json()["id"], elapsed

        def read() -> None:  # a dashboard polling while the batches run
            while not ended.is_set():
                for path in ("/api/batches?limit=50", *(f"/api/batches/{i}" for i in ids)):
                    t0 = time.perf_counter()
                    client.get(path).raise_for_status()
                    reads.append((time.perf_counter() - t0) * 1e3)
                ended.wait(0.05)

        start = time.perf_counter()
        with ThreadPoolExecutor(batches) as pool:
            submitted = list(pool.map(submit, range(batches)))
        ids.extend(i for i, _ in submitted)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        final = _wait(client, ids)
        seconds = time.perf_counter() - start
        ended.set()
        reader.join()
    exact = all(
        b["status"] == "done" and b["n_done"] == slides_per_batch and _csv_done(Path(b["out"]))
        == slides_per_batch for b in final
    )  # fmt: skip
    return LoadReport(
        batches, batches * slides_per_batch, seconds, tuple(t for _, t in submitted),
        tuple(reads), exact,
    )  # fmt: skip


def _csv_done(out: Path) -> int:
    lines = (out / "results.csv").read_text().splitlines()[1:]
    return sum(",done," in line for line in lines)


def _wait(client: Any, ids: list[str]) -> list[dict[str, Any]]:
    while True:
        batches = [client.get(f"/api/batches/{i}").json() for i in ids]
        if all(b["status"] not in ("queued", "running") for b in batches):
            return batches
        time.sleep(0.5)
