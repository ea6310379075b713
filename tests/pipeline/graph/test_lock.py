"""The output folder's lock: the pure staleness rule, then the file work (no cluster)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import psutil
import pytest

from slidemill.pipeline.errors import OutputLockedError
from slidemill.pipeline.graph import LockHolder, hold_output, is_stale
from slidemill.schemas.layout import LOCK_FILE
from tests.pipeline.graph.conftest import wait_for

HERE = socket.gethostname()
HOLDER = LockHolder(host=HERE, pid=4242, process_started=1000.0, since=1001.0, token="t")


@pytest.mark.parametrize(
    ("holder", "pid_started", "untouched_s", "stale"),
    [
        (HOLDER, 1000.0, 10_000.0, False),  # alive here: never stale, however quiet
        (HOLDER, None, 0.0, True),  # no such process here
        (HOLDER, 1500.0, 0.0, True),  # its PID now belongs to a later process
        (replace(HOLDER, host="elsewhere"), None, 60.0, False),  # heartbeat recent
        (replace(HOLDER, host="elsewhere"), None, 601.0, True),  # heartbeat stopped
        (None, None, 60.0, False),  # being written
        (None, None, 601.0, True),  # unreadable and abandoned
    ],
)
def test_a_lock_is_stale_only_when_its_holder_is_known_dead(
    holder: LockHolder | None, pid_started: float | None, untouched_s: float, stale: bool
) -> None:
    assert is_stale(holder, host=HERE, pid_started=pid_started, untouched_s=untouched_s) is stale


def write_lock(out: Path, holder: LockHolder, age_s: float = 0.0) -> Path:
    path = out / LOCK_FILE
    path.write_text(json.dumps(asdict(holder)))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def me(**changes: object) -> LockHolder:
    pid = os.getpid()
    started = psutil.Process(pid).create_time()
    return replace(LockHolder(HERE, pid, started, time.time(), "other"), **changes)  # type: ignore[arg-type]


def test_a_second_holder_is_refused_with_the_first_named(tmp_path: Path) -> None:
    with hold_output(tmp_path) as first:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (record["host"], record["pid"]) == (HERE, os.getpid())
        with pytest.raises(OutputLockedError) as refused, hold_output(tmp_path):
            pytest.fail("a second holder got the lock")
        message = str(refused.value)
        assert f"in use by another slidemill run ({first.describe()})" in message
        assert f"PID {os.getpid()} on {HERE}, since " in message and "\n" not in message
        assert (tmp_path / LOCK_FILE).exists()  # the refusal left the holder's lock alone
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), hold_output(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()
    with hold_output(tmp_path):
        pass


def test_the_lock_of_a_process_that_exited_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    write_lock(tmp_path, LockHolder(HERE, proc.pid, started, time.time(), "dead"))
    with hold_output(tmp_path) as holder:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == holder.token
    assert f"took over a stale lock (PID {proc.pid} on {HERE}" in caplog.text


def test_a_reused_pid_does_not_keep_a_lock(tmp_path: Path) -> None:
    # this process has the PID, but started at another time than the holder did
    write_lock(tmp_path, me(process_started=psutil.Process().create_time() - 3600))
    with hold_output(tmp_path):
        pass


def test_another_hosts_lock_is_kept_while_its_heartbeat_goes_on(tmp_path: Path) -> None:
    path = write_lock(tmp_path, me(host="elsewhere"), age_s=60)
    with pytest.raises(OutputLockedError, match="on elsewhere"), hold_output(tmp_path):
        pass
    os.utime(path, (0, 0))  # untouched for decades
    with hold_output(tmp_path):
        pass


def test_an_unreadable_lock_is_kept_until_abandoned(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE
    path.write_text("")  # as between its holder's create and write
    with (
        pytest.raises(OutputLockedError, match="being written or unreadable"),
        hold_output(tmp_path),
    ):
        pass
    os.utime(path, (0, 0))  # untouched for decades
    with hold_output(tmp_path):
        pass


def test_the_holder_keeps_touching_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("slidemill.pipeline.graph._lock.HEARTBEAT_S", 0.01)
    with hold_output(tmp_path):
        path = tmp_path / LOCK_FILE
        os.utime(path, (0, 0))
        wait_for(lambda: path.stat().st_mtime > 0, "a heartbeat", deadline_s=30)


def test_a_waiting_run_gets_the_lock_once_it_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused_once = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        refused_once.set()
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(time, "sleep", sleep)  # the waiting run's poll
    got: list[LockHolder] = []

    def waiter() -> None:
        with hold_output(tmp_path, wait_s=60) as holder:
            got.append(holder)

    with hold_output(tmp_path) as first:
        thread = threading.Thread(target=waiter)
        thread.start()
        assert refused_once.wait(timeout=30)
        assert not got
    thread.join(timeout=30)
    assert len(got) == 1 and got[0].token != first.token
