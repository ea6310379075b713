"""A `slidemill` server command (`serve`, `view`) started for a benchmark: its own process group
on a free loopback port, ready when a probe URL answers 200, stopped with the whole group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from slidemill.schemas.errors import SlidemillError


@dataclass(frozen=True, slots=True)
class Served:
    """A running server."""

    proc: subprocess.Popen[bytes]
    """Its process (the leader of its own process group)."""
    url: str
    """Its base URL, `http://127.0.0.1:PORT`."""


@contextmanager
def served(
    command: Sequence[str],
    probe: str,
    log: Path,
    *,
    error: type[SlidemillError],
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    start_timeout: float = 120.0,
) -> Iterator[Served]:
    """Run `python -m slidemill.cli COMMAND --port PORT` (output to `log`) until `probe` answers
    200; yield it, then SIGTERM its group, and SIGKILL what outlives the grace period. Raises
    `error` naming the log when it exits or stays unready before `start_timeout`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "slidemill.cli", *command, "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the group holds its cluster's workers too
            env={**os.environ, **(env or {})},
        )
    try:
        if not _ready(proc, f"{url}{probe}", dict(headers or {}), start_timeout):
            raise error(f"`slidemill {command[0]}` did not start; see {log}")
        yield Served(proc, url)
    finally:
        _stop(proc)


def _ready(
    proc: subprocess.Popen[bytes], probe: str, headers: dict[str, str], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(probe, headers=headers, timeout=5).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen[bytes], grace: float = 60.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
