"""A real `slidemill serve` process on a free loopback port, with a real SQLite ledger file and
an embedded LocalCluster, driven over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import REPO, free_port

TOKEN = "test-token-0123456789"
SHARED = REPO.parent / "shared" / "data"


@dataclass
class Service:
    """One service process and how to reach it."""

    url: str
    state: Path
    roots: tuple[Path, ...]
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def get(self, path: str) -> Any:
        with self.client() as c:
            response = c.get(path)
            response.raise_for_status()
            return response.json()

    def wait_for(self, batch_id: str, done: Any, timeout: float = 240) -> dict[str, Any]:
        """Poll the batch until `done(batch)` holds (a deadline, no fixed sleeps)."""
        deadline = time.monotonic() + timeout
        while True:
            batch: dict[str, Any] = self.get(f"/api/batches/{batch_id}")
            if done(batch):
                return batch
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"batch {batch_id} stuck: {batch}"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the service and its cluster's processes, as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def start_service(state: Path, roots: tuple[Path, ...], *extra: str) -> Service:
    """Start `slidemill serve` and wait (with a deadline) until its API answers."""
    port = free_port()
    log = state / f"service-{port}.log"
    state.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "slidemill.cli", "serve", "--port", str(port)]
    # one local worker, unless the caller names a cluster config
    workers = [] if "--cluster" in extra else ["--workers", "1"]
    args += ["--state", str(state), *workers, *extra]
    for root in roots:
        args += ["--allow-root", str(root)]
    env = {**os.environ, "SLIDEMILL_TOKEN": TOKEN}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    service = Service(f"http://127.0.0.1:{port}", state, roots, proc, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            with service.client() as c:
                if c.get("/api/health").status_code == 200:
                    return service
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            service.stop()
            pytest.fail(f"the service did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def roots_for(base: Path) -> tuple[Path, ...]:
    return (base, SHARED) if SHARED.is_dir() else (base,)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.getbasetemp()
    running = start_service(tmp_path_factory.mktemp("state"), roots_for(base))
    yield running
    running.stop()
