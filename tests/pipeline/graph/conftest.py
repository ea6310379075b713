"""Real `dask scheduler` and `dask worker` processes for the fault tests, started per test so a
test may kill any of them; each worker loads `_hold.py`, which holds a stage when armed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed import Client

from tests.helpers import stop_groups

HOLD = Path(__file__).with_name("_hold.py")
DEADLINE_S = 120.0


def wait_for(predicate: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `predicate` until it holds; fail the test after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _scheduler_address(path: Path) -> str:
    """The address in a scheduler file, or '' while it is missing or half-written."""
    try:
        return str(json.loads(path.read_text())["address"])
    except (OSError, ValueError, KeyError):
        return ""


class DaskProcesses:
    """A scheduler and workers as processes; `hold_dir` arms and watches their held stages."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hold_dir = folder / "hold"
        self.hold_dir.mkdir(parents=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.scheduler = self._start_scheduler()
        self.address: str = _scheduler_address(folder / "scheduler.json")

    def _spawn(self, module: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SLIDEMILL_TEST_HOLD_DIR": str(self.hold_dir)}
        with (self.folder / f"{module}-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"distributed.cli.{module}", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # its own process group: `close` stops what it started
            )
        self.procs.append(proc)
        return proc

    def _start_scheduler(self) -> subprocess.Popen[bytes]:
        sched_file = self.folder / "scheduler.json"
        proc = self._spawn(
            "dask_scheduler", "--host", "127.0.0.1", "--port", "0",
            "--scheduler-file", str(sched_file), "--dashboard-address", ":0",
        )  # fmt: skip
        # the scheduler writes its file in place: it may exist before it holds the whole JSON
        wait_for(
            lambda: _scheduler_address(sched_file) != "" or proc.poll() is not None,
            "the scheduler",
        )
        assert proc.poll() is None, "the scheduler exited"
        return proc

    def start_workers(self, n: int, *, nanny: bool = True) -> None:
        """Start `n` single-threaded workers and wait until all of them have joined."""
        with Client(self.address, timeout=30) as client:
            before = client.scheduler_info(n_workers=0)["n_workers"]
            for _ in range(n):
                self._spawn(
                    "dask_worker", self.address, "--nthreads", "1", "--no-dashboard",
                    "--host", "127.0.0.1", "--preload", str(HOLD),
                    *([] if nanny else ["--no-nanny"]),
                )  # fmt: skip
            client.wait_for_workers(before + n, timeout=DEADLINE_S)

    def n_workers(self) -> int:
        with Client(self.address, timeout=30) as client:
            return int(client.scheduler_info(n_workers=0)["n_workers"])

    def arm(self, *stages: str) -> None:
        for stage in stages:
            (self.hold_dir / f"arm-{stage}").touch()

    def held_pid(self, stage: str) -> int:
        """The PID of the worker holding `stage`, once one does."""
        held = self.hold_dir / f"held-{stage}"
        wait_for(held.exists, f"a worker to hold {stage}")
        return int(held.read_text())

    def release(self, stage: str) -> None:
        (self.hold_dir / f"release-{stage}").touch()

    def kill_held(self, stage: str) -> int:
        """SIGKILL the worker holding `stage`; its PID."""
        pid = self.held_pid(stage)
        os.kill(pid, signal.SIGKILL)
        return pid

    def close(self) -> None:
        """Stop every process and what it started (a nanny's worker may still be starting, and
        would wait for a scheduler that is gone)."""
        stop_groups(self.procs)


@pytest.fixture()
def dask_processes(tmp_path: Path) -> Iterator[DaskProcesses]:
    processes = DaskProcesses(tmp_path / "cluster")
    try:
        yield processes
    finally:
        processes.close()
