"""The wheel `make dist` builds ($SLIDEMILL_TEST_WHEEL, set by `make test-dist`), installed as a
lab installs it: into a fresh venv, outside the checkout, with the `viewer` extra alone. From
there `slidemill run` diagnoses the sample slide, recording the wheel's version, and `slidemill
view` serves it with the OpenSeadragon the wheel carries; no environment variable points back.

PyTorch's CPU build keeps the venv small (images/cpu-constraints.txt, as the CPU image); the
downloads come from pip's cache after the first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port

# the first install downloads the dependencies (about 1 GB); later ones read pip's cache
pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.timeout(1800)]

WHEEL_VAR = "SLIDEMILL_TEST_WHEEL"


@pytest.fixture(scope="module")
def wheel() -> Path:
    given = os.environ.get(WHEEL_VAR)
    if not given:
        pytest.fail(f"{WHEEL_VAR} is not set: `make test-dist` builds the wheel and sets it")
    return Path(given)


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder outside the checkout (pytest's base folder is under /tmp)."""
    folder = tmp_path_factory.mktemp("outside")
    assert not folder.resolve().is_relative_to(REPO)
    return folder


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """This environment without anything that could lead back to the checkout or its venv."""
    dropped = {"PYTHONPATH", "VIRTUAL_ENV", "SLIDEMILL_OPENSEADRAGON_DIR", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in dropped} | {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def venv(wheel: Path, outside: Path, env: dict[str, str]) -> Path:
    """A fresh venv with the wheel and the `viewer` extra; its bin folder."""
    venv = outside / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    subprocess.run(
        [venv / "bin/python", "-m", "pip", "install", "--quiet", "--constraint",
         REPO / "images/cpu-constraints.txt", f"slidemill[viewer] @ {wheel.as_uri()}"],
        check=True, env=env, cwd=outside, timeout=1200,
    )  # fmt: skip
    return venv / "bin"


def _run(bin_dir: Path, cwd: Path, env: dict[str, str], *args: str | Path) -> str:
    proc = subprocess.run(
        [bin_dir / "slidemill", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_wheel_runs_and_views_the_sample_slide_from_a_fresh_venv(
    wheel: Path, venv: Path, outside: Path, env: dict[str, str], sample_slide: Path
) -> None:
    version = wheel.name.split("-")[1]
    python = venv / "python"
    where = subprocess.run(
        [python, "-c", "import slidemill.viewer as v; print(v.__file__); "
         "print(v.openseadragon_dir())"],
        capture_output=True, text=True, env=env, cwd=outside, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(venv.parent) for p in where), where
    # the core and the viewer only: neither the service's, the cluster's nor the encoders'
    for module in ("sqlalchemy", "dask_jobqueue", "timm", "torchvision"):
        absent = subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True)
        assert absent.returncode != 0, f"{module} came with slidemill[viewer]"

    _run(venv, outside, env, "model", "init", "--out", outside / "model", "--encoder", "tiny_cnn",
         "--tile-px", "64", "--mpp", "2.0", "--seed", "1")  # fmt: skip
    out = outside / "run"
    _run(venv, outside, env, "run", sample_slide, "--model", outside / "model", "--out", out,
         "--workers", "1", "--no-progress")  # fmt: skip
    (result_file,) = out.glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "done" and result["n_tiles"] > 0
    assert result["provenance"]["slidemill_version"] == version

    port = free_port()
    log = outside / "view.log"
    server = subprocess.Popen(
        [venv / "slidemill", "view", out, "--port", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=outside,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                status, body = _get(f"{base}/api/runs")
                break
            except OSError:
                assert time.monotonic() < deadline, "the viewer did not answer in 120 s"
                time.sleep(0.2)
        assert status == 200
        (run,) = (
            json.loads(body)["runs"] if isinstance(json.loads(body), dict) else json.loads(body)
        )
        key = run["key"] if "key" in run else run["id"]
        status, page = _get(f"{base}/runs/{key}/slides/{result['slide_id']}/")
        assert status == 200 and b"openseadragon/openseadragon.min.js" in page
        status, script = _get(f"{base}/openseadragon/openseadragon.min.js")
        lock = json.loads((REPO / "viewer/package-lock.json").read_text())
        pinned = lock["packages"]["node_modules/openseadragon"]["version"]
        assert status == 200 and script.startswith(f"//! openseadragon {pinned}\n".encode())
        status, tile = _get(
            f"{base}/api/runs/{key}/slides/{result['slide_id']}/slide_files/0/0_0.jpeg"
        )
        assert status == 200 and tile[:2] == b"\xff\xd8"  # a JPEG from the slide, via OpenSlide
    finally:
        server.terminate()
        server.wait(timeout=30)
