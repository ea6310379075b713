"""Pure: how long the cluster has had no workers, from the batch's periodic polls."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class WorkerWatch:
    """Watches the number of workers; `expired` once there have been none for `timeout_s`.

    The clock starts only after a worker has been seen: until then the cluster is starting
    (batch jobs may wait long in a queue), which its backend, not the batch, waits for."""

    timeout_s: float
    """How long the batch goes on with no workers."""
    seen: bool = False
    """Whether a poll has found a worker."""
    empty_since: float | None = None
    """Time of the first poll that found none after one was seen; None while there are some."""

    def observe(self, n_workers: int, now: float) -> WorkerWatch:
        """The watch after a poll at `now` found `n_workers`."""
        if n_workers > 0:
            return replace(self, seen=True, empty_since=None)
        if not self.seen or self.empty_since is not None:
            return self
        return replace(self, empty_since=now)

    def expired(self, now: float) -> bool:
        """Whether there have been no workers for `timeout_s` at `now`."""
        return self.empty_since is not None and now - self.empty_since >= self.timeout_s
