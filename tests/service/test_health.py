"""The runner's threads outlive a bad claim, and /api/health says when one of the service's
threads has stopped (a runner's, the scheduler's) instead of answering ok. The app runs in
process (its lifespan starts the threads) over a real SQLite ledger and a one-worker
LocalCluster."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from slidemill.cluster import load_cluster_config
from slidemill.service import BatchRunner, Scheduler, ServiceSettings, create_app
from slidemill.service.ledger import BatchRecord, Ledger, LedgerUnavailableError


class Fatal(BaseException):
    """Not an `Exception`: nothing in a thread catches it, as with a bug in its error handling."""


class Scripted(Ledger):
    """A real ledger whose `claim_next` raises what the test lines up, then claims as usual."""

    script: list[BaseException]
    claims: int = 0

    def claim_next(self) -> BatchRecord | None:
        self.claims += 1
        if self.script:
            raise self.script.pop(0)
        return super().claim_next()


def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Scripted]:
    opened = Scripted.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assert isinstance(opened, Scripted)
    opened.script = []
    yield opened
    opened.close()


@pytest.fixture
def runner(ledger: Scripted) -> BatchRunner:
    return BatchRunner(ledger, load_cluster_config(n_workers=1), max_running=2)


def test_a_runner_thread_survives_a_claim_that_raises(
    ledger: Scripted, runner: BatchRunner
) -> None:
    ledger.script = [LedgerUnavailableError("ledger: database is locked"), RuntimeError("a bug")]
    runner.start()
    try:
        _until(lambda: ledger.claims >= 4)  # both raised, and the threads went on claiming
        assert runner.problems() == []
    finally:
        runner.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_health_answers_503_naming_a_stopped_thread(
    ledger: Scripted, runner: BatchRunner, tmp_path: Path
) -> None:
    settings = ServiceSettings(allow_roots=(tmp_path,), state_dir=tmp_path)
    scheduler = Scheduler(ledger, settings.allow_roots, runner, tick_s=3600)
    app = create_app(settings, ledger, runner, scheduler)
    with TestClient(app) as client:
        healthy = client.get("/api/health")
        assert healthy.status_code == 200
        assert healthy.json() == {"status": "ok", "workers": 1, "running": 0, "problems": []}
        ledger.script = [Fatal()]
        runner.wake()
        _until(lambda: bool(runner.problems()))
        failing = client.get("/api/health")
        assert failing.status_code == 503
        body = failing.json()
        assert body["status"] == "failing"
        (problem,) = body["problems"]
        assert "slidemill-batch-" in problem and "stopped" in problem
