"""Which inbox files a schedule's run takes: a pure decision over a folder listing and what the
ledger has seen (`take`), and a thin I/O shell that lists the folder (`scan`) and hashes a file
(`file_sha256`).

A file's key is its path, size and mtime (ns). A key seen before is not new: done, it is never
taken again; failed, it is taken again until `max_attempts`, then held with its reason. A
changed file is a new key. A file modified within `settle_s` of now may still be being
written: it is left for the next run. A new key whose size and content equal a seen file's that
is gone from its old path is that slide, moved: it keeps its history instead of running again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from slidemill.pipeline.slides import expand
from slidemill.service.schedules._errors import InvalidScheduleError

_HASH_CHUNK = 1 << 20


class InboxState(StrEnum):
    """Where a seen inbox file stands."""

    TAKEN = "taken"
    """Handed to a batch whose result is not in yet."""
    DONE = "done"
    """Its batch published it; never taken again."""
    FAILED = "failed"
    """It failed; taken again at the next run while under the attempt limit."""
    HELD = "held"
    """It failed `max_attempts` times: kept out, with its reason, until a person acts."""


@dataclass(frozen=True, slots=True)
class InboxFile:
    """A slide file in an inbox folder, as listed."""

    path: str
    """Absolute path."""
    size: int
    """Bytes."""
    mtime_ns: int
    """Modification time, ns since the epoch."""
    sha256: str | None = None
    """Its content's hash (hex), when it was computed (only to tell a moved file)."""

    @property
    def key(self) -> tuple[str, int, int]:
        """What makes it the same file: path, size, mtime."""
        return (self.path, self.size, self.mtime_ns)


class SeenFile(Protocol):
    """What `take` reads of a file the ledger has seen (the ledger's `InboxRecord` is one)."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def state(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Moved:
    """A seen file found at a new path (same size and content): the same slide."""

    old: tuple[str, int, int]
    """The seen key (path, size, mtime_ns)."""
    new: InboxFile
    """Where it is now, with its sha256 when that was how it was recognised."""


@dataclass(frozen=True, slots=True)
class Held:
    """A file that reached its attempt limit at this decision."""

    file: InboxFile
    """The file."""
    reason: str
    """Its last error."""


@dataclass(frozen=True, slots=True)
class InboxDecision:
    """What a run does with the inbox. Each listed file is in at most one group."""

    new: tuple[InboxFile, ...]
    """Never seen, settled: taken (with sha256 when it had to be computed)."""
    retry: tuple[InboxFile, ...]
    """Failed before, under the limit: taken again."""
    settling: tuple[InboxFile, ...]
    """Modified within the settle time: left for the next run."""
    moved: tuple[Moved, ...]
    """Seen files at a new path: the ledger moves their rows; a failed one is also in `retry`
    (or `hold`), at its new path."""
    hold: tuple[Held, ...]
    """Failed files now at the limit: the ledger marks them held."""
    left: tuple[InboxFile, ...]
    """Seen and not taken: done, already held, or in a batch now."""

    @property
    def take(self) -> tuple[InboxFile, ...]:
        """The files for this run's batch: new ones, then retries."""
        return self.new + self.retry


def take(
    listing: Iterable[InboxFile],
    seen: Iterable[SeenFile],
    now: datetime,
    settle_s: float,
    max_attempts: int,
    *,
    digest: Callable[[InboxFile], str] | None = None,
) -> InboxDecision:
    """Decide which of `listing` a run takes, given the files the ledger has `seen`.

    `digest` hashes a file's content; it is called only for a new key whose size equals that of
    a seen file gone from its old path (a candidate move), never for anything else. Without it,
    or when the gone file's hash was never recorded, a move is recognised by size and mtime
    alone (a rename keeps the mtime)."""
    if now.tzinfo is None:
        raise InvalidScheduleError(f"now {now.isoformat()} has no time zone")
    if max_attempts < 1:
        raise InvalidScheduleError(f"max_attempts {max_attempts} must be ≥ 1")
    files = list(dict.fromkeys(listing))
    settled_before = int(now.timestamp() * 1e9) - int(settle_s * 1e9)
    by_key = {(s.path, s.size, s.mtime_ns): s for s in seen}
    present = {f.path for f in files}
    listed = {f.key for f in files}
    # a seen file whose path is no longer listed (or listed with another key) may have moved
    gone: dict[int, list[SeenFile]] = {}
    for key, s in by_key.items():
        if key not in listed and s.path not in present:
            gone.setdefault(s.size, []).append(s)

    new: list[InboxFile] = []
    retry: list[InboxFile] = []
    settling: list[InboxFile] = []
    moved: list[Moved] = []
    hold: list[Held] = []
    left: list[InboxFile] = []

    def judge(f: InboxFile, s: SeenFile) -> None:
        state = InboxState(s.state)
        if state is InboxState.FAILED and s.attempts < max_attempts:
            retry.append(f)
        elif state is InboxState.FAILED:
            hold.append(Held(f, s.last_error or f"failed {s.attempts} times"))
        else:
            left.append(f)

    for f in files:
        known = by_key.get(f.key)
        if known is not None:
            judge(f, known)
            continue
        if f.mtime_ns > settled_before:
            settling.append(f)
            continue
        origin, f = _moved_from(f, gone.get(f.size, []), digest)
        if origin is None:
            new.append(f)
            continue
        gone[f.size].remove(origin)
        moved.append(Moved((origin.path, origin.size, origin.mtime_ns), f))
        judge(f, origin)
    return InboxDecision(
        new=tuple(new),
        retry=tuple(retry),
        settling=tuple(settling),
        moved=tuple(moved),
        hold=tuple(hold),
        left=tuple(left),
    )


def _moved_from(
    f: InboxFile, candidates: Sequence[SeenFile], digest: Callable[[InboxFile], str] | None
) -> tuple[SeenFile | None, InboxFile]:
    """The gone seen file `f` is, if any, and `f` with its sha256 if it was computed."""
    if not candidates:
        return None, f
    hashed = [c for c in candidates if c.sha256 is not None]
    if hashed and digest is not None:
        if f.sha256 is None:
            f = InboxFile(f.path, f.size, f.mtime_ns, digest(f))
        for c in hashed:
            if c.sha256 == f.sha256:
                return c, f
    for c in candidates:
        if c.sha256 is None and c.mtime_ns == f.mtime_ns:
            return c, f
    return None, f


def scan(folder: str | Path) -> list[InboxFile]:
    """The slide files under `folder` (the pipeline's slide discovery), with size and mtime.
    A file that vanishes while listed is left out; it is seen at the next run if it is back."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidScheduleError(f"inbox {root} is not a folder; create it or fix the path")
    out = []
    for path in expand([root]):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append(InboxFile(str(path), st.st_size, st.st_mtime_ns))
    return out


def file_sha256(file: InboxFile) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks; `take`'s `digest`."""
    h = hashlib.sha256()
    with Path(file.path).open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
