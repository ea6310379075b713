"""One run per output folder: a lock file that names its holder (host, PID, start time).

`<out>/.slidemill.lock` is created with O_CREAT|O_EXCL, so of two runs starting together only
one gets it; the other refuses (or waits) with a line naming the holder. A lock whose holder is
dead is stale and is taken over. On the holder's host that is certain: no process with its PID
started at its recorded time. From another host, where its PID cannot be seen, the holder's
heartbeat (it touches the file every `HEARTBEAT_S`) must have stopped for `STALE_AFTER_S`.

`is_stale` decides (pure); `hold_output` does the file work. The batch holds the lock from
before it reads earlier results until after it writes `results.csv`; anything else that writes
into an output folder (the lab service) takes the same lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import psutil

from slidemill.pipeline.errors import OutputLockedError
from slidemill.schemas.layout import LOCK_FILE

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
"""How often the holder touches its lock file."""
STALE_AFTER_S = 600.0
"""A lock from another host untouched for this long is stale: many missed heartbeats, with room
for clocks that disagree between hosts."""
_SAME_START_S = 0.05
"""Process start times are read in clock ticks; within this, two readings are one process."""
_WAIT_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds an output folder, as written in its lock file."""

    host: str
    """Host name of the holding process."""
    pid: int
    """Its process id on that host."""
    process_started: float
    """When that process started (epoch seconds): tells it from a later one given its PID."""
    since: float
    """When it took the lock (epoch seconds)."""
    token: str
    """Unique to this taking of the lock: release and takeover remove only the lock they read."""

    def describe(self) -> str:
        """One line for messages: PID, host and since when."""
        since = datetime.fromtimestamp(self.since).astimezone().isoformat(timespec="seconds")
        return f"PID {self.pid} on {self.host}, since {since}"


def is_stale(
    holder: LockHolder | None,
    *,
    host: str,
    pid_started: float | None,
    untouched_s: float,
    stale_after_s: float = STALE_AFTER_S,
) -> bool:
    """Whether a lock may be taken over because its holder is dead.

    `holder`: the lock file's content, None when it cannot be read (being written, or damaged).
    `host`: this host's name (one name, one PID space). `pid_started`: start time of the
    process that has the holder's PID on this host, None when there is none (only looked at on
    the holder's host). `untouched_s`: seconds since the lock file was last touched.
    """
    if holder is None or holder.host != host:
        return untouched_s > stale_after_s
    return pid_started is None or abs(pid_started - holder.process_started) > _SAME_START_S


@contextmanager
def hold_output(out: Path, *, wait_s: float = 0.0) -> Iterator[LockHolder]:
    """Hold `out`'s lock for the duration of the block, released on the way out (exceptions
    included); waits up to `wait_s` for another holder to finish, then raises
    `OutputLockedError` naming it. A stale lock is taken over."""
    path = out / LOCK_FILE
    me = _me()
    deadline = time.monotonic() + wait_s
    while not _try_take(path, me):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            holder = _read(path)
            who = holder.describe() if holder else "a holder being written or unreadable"
            raise OutputLockedError(
                f"{out}: in use by another slidemill run ({who}); wait for it to finish or "
                f"choose another output folder (lock file {path})"
            )
        time.sleep(min(remaining, _WAIT_POLL_S))
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(path, stop), name="slidemill-lock-heartbeat", daemon=True
    )
    beat.start()
    try:
        yield me
    finally:
        stop.set()
        beat.join()
        _release(path, me)


def _me() -> LockHolder:
    pid = os.getpid()
    return LockHolder(
        host=socket.gethostname(),
        pid=pid,
        process_started=psutil.Process(pid).create_time(),
        since=time.time(),
        token=uuid.uuid4().hex,
    )


def _try_take(path: Path, me: LockHolder) -> bool:
    """Create the lock for `me`, taking over a stale one; False when another run holds it."""
    for _ in range(2):  # a second try once a stale lock is out of the way
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _take_over_if_stale(path):
                return False
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(me), indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True
    return False


def _take_over_if_stale(path: Path) -> bool:
    """Move a stale lock out of the way; False when the lock is live."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return True  # released meanwhile
    holder = _read(path)
    here = socket.gethostname()
    pid_started = (
        process_started(holder.pid, holder.process_started)
        if holder and holder.host == here
        else None
    )
    if not is_stale(
        holder, host=here, pid_started=pid_started, untouched_s=time.time() - st.st_mtime
    ):
        return False
    # another contender may take the same stale lock: move it aside, then make sure the file
    # moved is the one judged stale, and put back a fresh lock taken in between
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return True
    moved = aside.stat()
    if (moved.st_ino, moved.st_dev) != (st.st_ino, st.st_dev):
        with suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink()
        return False
    aside.unlink()
    log.warning(
        "%s: took over a stale lock (%s, no longer running)",
        path.parent,
        holder.describe() if holder else "unreadable",
    )
    return True


def _read(path: Path) -> LockHolder | None:
    try:
        data = json.loads(path.read_text())
        return LockHolder(
            host=str(data["host"]),
            pid=int(data["pid"]),
            process_started=float(data["process_started"]),
            since=float(data["since"]),
            token=str(data["token"]),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def process_started(pid: int, recorded: float) -> float | None:
    """Start time of this host's process `pid`, None when there is none; `recorded` (the
    holder's own start time) when it exists but cannot be examined."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # it exists; whether it is the holder cannot be told
        return recorded


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with suppress(OSError):
            os.utime(path)


def _release(path: Path, me: LockHolder) -> None:
    holder = _read(path)
    if holder is None or holder.token != me.token:
        log.warning("%s: the lock was taken over while this run held it", path.parent)
        return
    with suppress(FileNotFoundError):
        path.unlink()
