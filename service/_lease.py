"""One service per ledger: a lease row in the ledger's database names the service that works it
(host, PID, process start time) and its heartbeat. A second service refuses to start, naming
the first; a lease whose holder is dead is stale and taken over. The ledger may be PostgreSQL
shared by several hosts, so the lease lives there rather than in a file of one host.

Staleness is the output folder lock's rule (`is_stale`): on the holder's host, certain (no
process with its PID started at its recorded time); from another host, its heartbeats must have
stopped for long enough. `lease_is_stale` decides (pure); `ServiceLease` does the ledger work.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import psutil

from slidemill.pipeline.errors import one_line
from slidemill.pipeline.graph import LockHolder, is_stale, process_started
from slidemill.schemas import SlidemillError
from slidemill.service.ledger import LeaseRecord, Ledger, LedgerInUseError

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
"""How often the holder renews its lease (the output folder lock's heartbeat, too)."""
_TRIES = 3
"""Looks at the lease before giving up when other services take and release it meanwhile."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def lease_is_stale(
    holder: LeaseRecord, *, host: str, pid_started: float | None, now: datetime
) -> bool:
    """Whether `holder`'s lease may be taken over because it is dead. `host`: this host's
    name; `pid_started`: start time of this host's process with the holder's PID, None when
    there is none (looked at only on the holder's host); `now`: the ledger's clock."""
    as_lock = LockHolder(
        host=holder.host,
        pid=holder.pid,
        process_started=holder.process_started,
        since=holder.acquired_at.timestamp(),
        token=holder.token,
    )
    untouched_s = (now - holder.heartbeat_at).total_seconds()
    return is_stale(as_lock, host=host, pid_started=pid_started, untouched_s=untouched_s)


def describe_holder(holder: LeaseRecord) -> str:
    """One line for messages: PID, host, since when, last heartbeat."""
    since = holder.acquired_at.astimezone().isoformat(timespec="seconds")
    beat = holder.heartbeat_at.astimezone().isoformat(timespec="seconds")
    return f"PID {holder.pid} on {holder.host}, since {since}, last heartbeat {beat}"


class ServiceLease:
    """This process's lease on `ledger`: `acquire` before anything touches its batches, the
    heartbeat (`start`) while serving, `release` at the end. `on_lost` is called once if
    another service takes the lease over (this one was judged dead): this one should stop."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        clock: Callable[[], datetime] = _utc_now,
        heartbeat_s: float = HEARTBEAT_S,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._on_lost = on_lost
        self.token = uuid.uuid4().hex
        """Unique to this lease: the ledger renews and releases only the lease it names."""
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._released = False

    @property
    def lost(self) -> str | None:
        """Why the lease is no longer this service's, one line; None while it holds it."""
        return self._lost

    def problem(self) -> str | None:
        """What is wrong with the lease, for the health check: lost, or its heartbeat stopped."""
        if self._lost is not None:
            return self._lost
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "the ledger lease's heartbeat has stopped (the service log says why)"
        return None

    def acquire(self) -> None:
        """Take the lease, taking over a stale one; `LedgerInUseError` naming the live holder
        otherwise."""
        host, pid = socket.gethostname(), os.getpid()
        started = psutil.Process(pid).create_time()
        holder: LeaseRecord | None = None
        for _ in range(_TRIES):
            holder = self._ledger.lease()
            replacing = None
            if holder is not None:
                pid_started = (
                    process_started(holder.pid, holder.process_started)
                    if holder.host == host
                    else None
                )
                if not lease_is_stale(holder, host=host, pid_started=pid_started,
                                      now=self._clock()):  # fmt: skip
                    break
                replacing = holder.token
            if self._ledger.take_lease(
                host=host, pid=pid, process_started=started, token=self.token, replacing=replacing
            ):
                if holder is not None:
                    log.warning("took over the ledger's lease from a service no longer running "
                                "(%s)", describe_holder(holder))  # fmt: skip
                return
        who = describe_holder(holder) if holder is not None else "another service starting"
        raise LedgerInUseError(
            f"ledger {self._ledger.url} is in use by another slidemill service ({who}); stop "
            "it first, or give this service another --state or --db"
        )

    def beat(self) -> bool:
        """Renew the lease once; False when it is no longer this service's (then `lost` says
        who has it, and `on_lost` is called)."""
        if self._lost is not None:
            return False
        if self._ledger.renew_lease(self.token):
            return True
        holder = self._ledger.lease()
        who = describe_holder(holder) if holder is not None else "nobody"
        self._lost = f"the ledger's lease was taken over ({who} holds it now)"
        log.error("%s: this service stops", self._lost)
        if self._on_lost is not None:
            self._on_lost()
        return False

    def start(self) -> None:
        """Renew the lease every `heartbeat_s` on a thread, until `release`."""
        self._thread = threading.Thread(target=self._loop, name="slidemill-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and give the lease up (unless another service holds it now);
        once, however often it is called."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lost is None and not self._released:
            self._released = True
            try:
                self._ledger.release_lease(self.token)
            except SlidemillError as err:  # a stale lease: the next service takes it over
                log.warning("the ledger's lease was not released: %s", one_line(err))

    def _loop(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                if not self.beat():
                    return
            except SlidemillError as err:  # the database away a while: beat again later
                log.warning("the ledger's lease was not renewed: %s", one_line(err))
