"""`slidemill bench-gpu`: the encoder alone against the encoder inside the whole pipeline, and
nvJPEG against the host's JPEG decode, in one process tree and one run, with the GPU's
utilisation sampled meanwhile. Prepared to run in one command on a GPU machine (`make
bench-gpu`); without a GPU the same code runs on the CPU and says so.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
import torch
from distributed import LocalCluster
from rich.console import Console
from rich.table import Table

from slidemill.bench._throughput import stored_tiles
from slidemill.pipeline.errors import PipelineError
from slidemill.pipeline.graph import run_batch
from slidemill.pipeline.slides import decode_stored
from slidemill.schemas import QCMode, RunSpec
from slidemill.schemas.errors import InvalidInputError
from slidemill.workers import (
    decode_jpegs,
    device_decode_available,
    encode_tensor,
    full_stream,
    init_bundle,
    load_bundle,
)

# The encoders the issue names, at the tile size each runs at.
ENCODERS: tuple[tuple[str, int], ...] = (("resnet50_trunc", 224), ("tiny_cnn", 224))
# Stored tiles per batched decode call.
DECODE_BATCH = 128


@dataclass(frozen=True, slots=True)
class Throughput:
    """One measurement of tiles per second."""

    name: str
    """What was measured."""
    tiles: int
    """Tiles processed."""
    seconds: float
    """Wall time."""

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class UtilSampler:
    """Samples the GPU's utilisation (NVML, else `nvidia-smi`) on a thread while it runs."""

    period_s: float = 0.25
    """Seconds between samples."""
    samples: list[float] = field(default_factory=list)
    """Utilisation in percent, one per sample."""
    source: str = "none"
    """Where the samples come from: nvml, nvidia-smi, or none."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _reader(self) -> Any:
        """A function returning one reading, or None where nothing can be read."""
        try:
            pynvml: Any = importlib.import_module("pynvml")  # nvidia-ml-py, where installed
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "nvml"
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # no NVML library or no GPU: the next way, or none
            pass
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return None
        self.source = "nvidia-smi"
        query = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        return lambda: float(
            subprocess.run(query, capture_output=True, text=True).stdout.split()[0]
        )

    def __enter__(self) -> UtilSampler:
        read = self._reader()
        if read is None:
            return self

        def loop() -> None:
            while not self._stop.wait(self.period_s):
                with contextlib.suppress(Exception):  # a missed sample is only a missed sample
                    self.samples.append(read())

        self._thread = threading.Thread(target=loop, name="gpu-util", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return f"GPU utilisation not sampled ({self.source}: no GPU to read)"
        s = np.asarray(self.samples)
        return (
            f"GPU utilisation ({self.source}, {len(s)} samples): mean {s.mean():.0f}%, "
            f"median {np.median(s):.0f}%, max {s.max():.0f}%"
        )


def _timed(seconds: float, once: Any) -> tuple[int, float]:
    """Run `once` (returning tiles) until `seconds` have passed; (tiles, wall seconds)."""
    tiles, t0 = 0, time.perf_counter()
    while True:
        tiles += once()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return tiles, elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_alone(
    bundle: Path, device: torch.device, batch_size: int, seconds: float
) -> Throughput:
    """The bundle's encoder on pre-decoded uint8 tiles already on `device`, through the same
    `encode_tensor` the pipeline's device path calls (autocast and channels_last on CUDA)."""
    model = load_bundle(bundle, device)
    px = model.manifest.tile_px
    gen = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (batch_size, 3, px, px), dtype=torch.uint8, generator=gen)
    tiles = tiles.to(device)
    encode_tensor(model, tiles, batch_size)  # warm-up: kernels chosen, memory allocated
    _sync(device)
    n, secs = _timed(seconds, lambda: len(encode_tensor(model, tiles, batch_size)))
    return Throughput(f"{model.manifest.encoder} {px}px alone", n, secs)


def stored_streams(path: Path) -> tuple[list[bytes], list[bytes], bytes | None, bool, int]:
    """Level 0's stored JPEG tiles: as stored, as standalone streams, the tables, whether the
    colour is RGB without a marker, and the tile edge."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if not page.is_tiled or page.compression != 7 or page.tilewidth != page.tilelength:
            raise InvalidInputError(f"{path}: level 0 is not stored as square JPEG tiles")
        raw = stored_tiles(tif)
        tables = page.jpegtables or None
        rgb_as_is = int(page.photometric) == 2  # RGB JPEG (Aperio) without a marker
        px = int(page.tilewidth)
    raw = [b for b in raw if b]
    return raw, [full_stream(b, tables, rgb_as_is) for b in raw], tables, rgb_as_is, px


def decode_compare(
    path: Path, device: torch.device, seconds: float
) -> tuple[Throughput, Throughput, int]:
    """The slide's stored level-0 tiles decoded on one host core (imagecodecs) and on `device`
    (torchvision's `decode_jpeg`, batched: nvJPEG on CUDA); and the largest pixel difference
    between the two."""
    raw, streams, tables, rgb_as_is, px = stored_streams(path)
    out = np.empty((px, px, 3), np.uint8)

    def host() -> int:
        for b in raw:
            decode_stored(b, tables, rgb_as_is, (px, px), out)
        return len(raw)

    def on_device() -> int:
        for start in range(0, len(streams), DECODE_BATCH):
            decode_jpegs(streams[start : start + DECODE_BATCH], device)
        _sync(device)
        return len(streams)

    on_device()  # warm-up (nvJPEG's handles and buffers)
    n_host, s_host = _timed(seconds, host)
    n_dev, s_dev = _timed(seconds, on_device)
    worst = 0
    for start in range(0, len(streams), DECODE_BATCH):
        part = decode_jpegs(streams[start : start + DECODE_BATCH], device)
        for k, tile in enumerate(part):
            decode_stored(raw[start + k], tables, rgb_as_is, (px, px), out)
            got = tile.permute(1, 2, 0).cpu().numpy().astype(np.int16)
            worst = max(worst, int(np.abs(got - out).max()))
    where = "nvJPEG" if device.type == "cuda" else "torchvision on the CPU"
    return (
        Throughput("JPEG decode, one host core (imagecodecs)", n_host, s_host),
        Throughput(f"JPEG decode, {where}, batches of {DECODE_BATCH}", n_dev, s_dev),
        worst,
    )


@contextlib.contextmanager
def bench_cluster(device: torch.device, console: Console) -> Iterator[LocalCluster]:
    """A LocalCUDACluster (one worker per GPU) where dask-cuda is installed and a GPU is
    seen; else a LocalCluster of one worker, with a line saying which."""
    threads = max(1, min(8, os.cpu_count() or 1))
    if device.type == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except Exception as err:  # not installed, or not for this dask: say which, go on
            console.print(f"dask-cuda unusable ({err!r}): a LocalCluster of one worker instead")
        else:
            console.print(f"LocalCUDACluster, {threads} threads per GPU worker")
            with LocalCUDACluster(threads_per_worker=threads, dashboard_address=":0") as c:
                yield c
            return
    else:
        console.print(f"no GPU: a LocalCluster of one worker, {threads} threads, on the CPU")
    with LocalCluster(n_workers=1, threads_per_worker=threads, dashboard_address=":0") as cluster:
        yield cluster


def pipeline_rate(
    cluster: LocalCluster,
    slide: Path,
    bundle: Path,
    out: Path,
    decode: Literal["auto", "cpu", "device"],
    batch_size: int,
) -> tuple[Throughput, str | None]:
    """One whole run of `slide` on `cluster`: tiles per second of wall time, and where its
    tiles were decoded (the result's provenance)."""
    shutil.rmtree(out, ignore_errors=True)
    spec = RunSpec(
        slides=(slide,),
        model=bundle,
        out=out,
        scheduler=cluster.scheduler_address,
        force=True,
        jpeg_decode=decode,
        batch_size=batch_size,
        qc=QCMode.OFF,
    )
    t0 = time.perf_counter()
    report = run_batch(spec)
    seconds = time.perf_counter() - t0
    (result,) = report.results
    if result.status != "done":
        raise PipelineError(f"bench-gpu run failed: {result.error}")
    shutil.rmtree(out, ignore_errors=True)
    name = f"pipeline, {decode} decode"
    return Throughput(name, result.n_tiles, seconds), result.provenance.decode


def run_bench_gpu(
    sample: Path,
    large: Path | None,
    seconds: float,
    console: Console,
    *,
    workdir: Path,
    batch_size: int | None = None,
    encoders: tuple[tuple[str, int], ...] = ENCODERS,
) -> None:
    """Measure and print everything `slidemill bench-gpu` reports. The pipeline runs on `large`
    when given (a GPU needs many tiles to say anything), else on `sample`, at the slide's own
    µm/px so that its stored JPEG is kept; JPEG decode is compared on both slides."""
    from slidemill.pipeline.slides import READERS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    batch = batch_size or (256 if cuda else 16)
    name = torch.cuda.get_device_name(device) if cuda else "none"
    console.print(
        f"torch {torch.__version__}, GPU: {name}; JPEG decode on the device: "
        f"{'nvJPEG' if cuda and device_decode_available('cuda') else 'no (host decode)'}"
    )
    if not cuda:
        console.print("[bold]no GPU here: the CPU path of the same script, end to end[/bold]")
    workdir.mkdir(parents=True, exist_ok=True)
    slide = large or sample
    with READERS.lease(slide) as reader:
        mpp = reader.mpp or 0.5
    bundles = {}
    for encoder, px in encoders:
        bundles[encoder] = workdir / f"bundle-{encoder}-{px}-{mpp:g}"
        if not bundles[encoder].exists():
            init_bundle(bundles[encoder], encoder=encoder, tile_px=px, mpp=mpp, seed=0)
    rows: list[tuple[str, Throughput, str]] = []
    ratios: list[str] = []
    speedups: list[str] = []
    with UtilSampler() as util:
        alone = {e: encoder_alone(b, device, batch, seconds) for e, b in bundles.items()}
        for t in alone.values():
            rows.append(("encoder alone", t, "pre-decoded tensors on the device"))
        for path in dict.fromkeys((sample, slide)):
            host, dev, worst = decode_compare(path, device, seconds)
            rows += [
                (f"decode {path.name}", host, ""),
                (f"decode {path.name}", dev, f"max |Δ| vs host: {worst}"),
            ]
            speedups.append(
                f"  {path.name}: decode on the device / one host core = "
                f"{dev.tiles_per_s / host.tiles_per_s:.2f}, max pixel difference {worst}"
            )
        with bench_cluster(device, console) as cluster:
            for encoder, bundle in bundles.items():
                # the workers load the model once: a small slide first, untimed
                pipeline_rate(cluster, sample, bundle, workdir / "warm", "auto", batch)
                # without a GPU, `device` runs the nvJPEG path's code on torchvision's CPU decoder
                for decode in ("auto" if cuda else "device", "cpu"):
                    out = workdir / f"run-{encoder}-{decode}"
                    run, where = pipeline_rate(cluster, slide, bundle, out, decode, batch)
                    run = Throughput(f"{encoder}: {run.name}", run.tiles, run.seconds)
                    rows.append((f"pipeline {slide.name}", run, f"decoded: {where}"))
                    ratio = run.tiles_per_s / alone[encoder].tiles_per_s
                    ratios.append(
                        f"  {encoder}, {decode} decode (decoded: {where}): in-pipeline / alone "
                        f"= {ratio:.2f} (target ≥ 0.8)"
                    )
    table = Table(title=f"bench-gpu ({device.type}, {name}), one run")
    for col in ("stage", "measurement", "tiles", "s", "tiles/s", "note"):
        table.add_column(col, justify="right" if col in ("tiles", "s", "tiles/s") else "left")
    for stage, t, note in rows:
        table.add_row(
            stage, t.name, f"{t.tiles:,}", f"{t.seconds:.1f}", f"{t.tiles_per_s:,.0f}", note
        )
    console.print(table)
    for line in (*ratios, *speedups):
        console.print(line, highlight=False)
    console.print(f"  {util.summary()}", highlight=False)
