"""Folders written whole: a staged copy swapped in for the old one."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slidemill.schemas.files import staged_dir


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A staged folder for `path`; an existing `path` is swapped out only once the new one is
    whole, so a reader sees the old folder or the new one (apart from two renames)."""
    aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    with staged_dir(path) as tmp:
        yield tmp
        if path.exists():
            path.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)
