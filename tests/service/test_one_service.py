"""One service per ledger, with real `slidemill serve` processes on one state folder: a second
refuses to start with one line naming the first (host and PID), touching none of its batches;
once the first is SIGKILLed, its lease is stale and a new service takes it over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from slidemill.service.ledger import Ledger
from tests.helpers import free_port
from tests.service.conftest import TOKEN, roots_for, start_service


def test_a_second_service_on_one_ledger_is_refused_until_the_first_is_gone(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.getbasetemp()
    state = tmp_path_factory.mktemp("one-state")
    roots = roots_for(base)
    first = start_service(state, roots)
    try:
        args = [sys.executable, "-m", "slidemill.cli", "serve", "--port", str(free_port()),
                "--state", str(state), "--workers", "1"]  # fmt: skip
        for root in roots:
            args += ["--allow-root", str(root)]
        second = subprocess.run(
            args, capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "SLIDEMILL_TOKEN": TOKEN, "COLUMNS": "300"},
        )  # fmt: skip
        assert second.returncode == 1, second.stderr[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert f"PID {first.proc.pid} on {socket.gethostname()}" in errors[0]
        assert first.get("/api/health")["status"] == "ok"  # the first goes on
        first.kill()
    finally:
        first.stop()

    # the first died without releasing its lease: it is stale, and taken over
    again = start_service(state, roots)
    try:
        assert again.get("/api/health")["status"] == "ok"
    finally:
        again.stop()
    assert again.log.read_text().count("took over the ledger's lease") == 1
    # a service stopped by SIGTERM gives its lease up: the next needs no takeover
    with Ledger.open(f"sqlite:///{state / 'ledger.sqlite'}") as ledger:
        assert ledger.lease() is None
