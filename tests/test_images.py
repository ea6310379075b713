"""The CPU worker image that `make images` builds (its tag in $SLIDEMILL_TEST_IMAGE, set by
`make test-images`): its `dask worker`, started by Debian's podman with the host's network,
joins a `dask scheduler` on loopback and runs a batch of generated slides.

podman's default runtime, crun 1.8 (Debian 12), refuses hosts whose cgroups are mounted in the
hybrid v1/v2 layout ("cgroups in hybrid mode not supported"), as this workplace's VM's are, so
the worker runs under runc, which handles every layout. Its file and process limits are named
within this process's own: podman asks for 1048576 open files by default, which a host without
CAP_SYS_RESOURCE cannot grant ("setrlimit `RLIMIT_NOFILE`: Operation not permitted")."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from distributed import Client

from tests.helpers import dask_process, slidemill, stop_groups

pytestmark = [pytest.mark.image, pytest.mark.slow]

IMAGE_VAR = "SLIDEMILL_TEST_IMAGE"
WORKER = "image-worker"


@pytest.fixture(scope="module")
def image() -> str:
    name = os.environ.get(IMAGE_VAR)
    if not name:
        pytest.fail(f"{IMAGE_VAR} is not set: `make test-images` builds the image and sets it")
    found = subprocess.run(["podman", "image", "exists", name], check=False)
    assert found.returncode == 0, f"{name} is not in podman's storage: run `make images`"
    return name


def podman_run(image: str, name: str, mounts: list[Path], *command: str) -> list[str]:
    """`podman run` of `command` in `image`: the host's network (the scheduler is on loopback),
    this process's user (it owns the slides and the output folder), `mounts` at the same paths."""
    nofile, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        "podman", "run", "--rm", "--name", name, "--runtime", "runc", "--network", "host",
        "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096",
        "--user", f"{os.getuid()}:{os.getgid()}",
        *(arg for path in mounts for arg in ("--volume", f"{path}:{path}")),
        image, *command,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def image_cluster(
    image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A `dask scheduler` on loopback here and one `dask worker` inside the image; yields the
    scheduler's address and the container's name."""
    folder = tmp_path_factory.mktemp("image-cluster")
    sched_file = folder / "scheduler.json"
    scheduler = dask_process(
        "dask_scheduler", "--host", "127.0.0.1", "--port", "0",
        "--scheduler-file", str(sched_file), "--dashboard-address", ":0",
    )  # fmt: skip
    container = f"slidemill-test-{uuid.uuid4().hex[:8]}"
    worker: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, "scheduler did not start"
            assert scheduler.poll() is None, "scheduler exited"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        # the whole of pytest's base folder: the session's slides and bundle, this test's output
        base = tmp_path_factory.getbasetemp()
        log = folder / "worker.log"  # read when it fails; a pipe would fill and stall it
        worker = subprocess.Popen(
            podman_run(
                image, container, [base], "dask", "worker", address, "--name", WORKER,
                "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
            ),
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True,
        )  # fmt: skip
        with Client(address, timeout=60) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    client.wait_for_workers(1, timeout=5)
                    break
                except TimeoutError:
                    if worker.poll() is not None:
                        pytest.fail(f"the image's worker exited: {log.read_text()[-3000:]}")
                    assert time.monotonic() < deadline, "the image's worker did not join"
        yield address, container
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "10", container],
                       capture_output=True, check=False)  # fmt: skip
        if worker is not None:
            stop_groups([worker])
        scheduler.terminate()
        try:
            scheduler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()


def _where() -> dict[str, str]:  # sent by value: the image has no `tests`
    """On a worker: which Python, which slidemill, which torch."""
    import torch

    from slidemill.schemas import slidemill_version

    return {"prefix": sys.prefix, "slidemill": slidemill_version(), "torch": torch.__version__}


def test_the_image_worker_runs_a_batch_of_generated_slides(
    image: str, image_cluster: tuple[str, str], slides_dir: Path, tiny_bundle: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    address, container = image_cluster
    with Client(address, timeout=60) as client:
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["name"] == WORKER
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            where = client.run(_where)
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    (inside,) = where.values()
    # the worker is the image's Python and slidemill, the version the image is tagged with
    assert inside["prefix"] == "/opt/slidemill"
    label = subprocess.run(
        ["podman", "image", "inspect", "--format",
         '{{index .Labels "org.opencontainers.image.version"}}', image],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert inside["slidemill"] == label and label
    assert inside["torch"].endswith("+cpu")

    proc = slidemill(
        "run", slides_dir, "--model", tiny_bundle, "--out", tmp_path, "--scheduler", address,
        "--tiles-per-task", "8", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    slides = sorted(p.stem for p in slides_dir.iterdir())
    assert len(slides) >= 2
    for sid in slides:
        result = json.loads((tmp_path / sid / "result.json").read_text())
        assert result["status"] == "done" and result["n_tiles"] > 0, result
        assert (tmp_path / sid / "heatmap.png").stat().st_size > 0
    # the container is still the one worker: every task of the batch ran inside it
    running = subprocess.run(
        ["podman", "container", "inspect", "--format", "{{.State.Running}}", container],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert running == "true"
