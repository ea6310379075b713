"""Nothing half-written is presented as finished: every file and folder slidemill publishes is
written under a temporary sibling name and renamed into place (atomic on one file system)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling of `path` to write into, renamed onto `path` when the block ends
    without an error and removed when it raises. `suffix` keeps an extension that a writer
    reads (matplotlib chooses the format from it)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` so that readers see the old file or the whole new
    one."""
    with staged(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


@contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """A new temporary folder beside `path` to fill, renamed to `path` when the block ends
    without an error (an empty folder already at `path` is replaced) and removed when it
    raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        tmp.replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
