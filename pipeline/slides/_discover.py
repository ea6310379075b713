"""Turn the command line's files and folders into a list of slides with unique ids (pure apart
from listing folders)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# What OpenSlide opens; a file given by name is tried whatever its extension.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
)


@dataclass(frozen=True, slots=True)
class SlideEntry:
    """One slide of a batch."""

    slide_id: str
    """Unique within the batch: the file's stem, sanitised, with -2, -3 … on clashes."""
    path: Path
    """Absolute path."""


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders walked recursively for slide files; sorted within a folder.

    A DICOM slide is a folder of .dcm files: the first one stands for the whole series.
    """
    out: list[Path] = []
    for p in paths:
        p = p.expanduser().absolute()
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES
            )
            seen_dicom: set[Path] = set()
            for f in found:
                if f.suffix.lower() == ".dcm":
                    if f.parent in seen_dicom:
                        continue
                    seen_dicom.add(f.parent)
                out.append(f)
        else:
            out.append(p)
    # the same file named twice is one slide
    return list(dict.fromkeys(out))


def safe_id(stem: str) -> str:
    """A slide id from a file stem: letters and digits of any script (NFC-normalised, so one
    spelling per name), `.`, `-` and `_` stay; each run of anything else (separators, spaces,
    `%`, `#`, `?`, control characters), which a file system or a URL path cannot hold as is,
    becomes one `_`."""
    text = unicodedata.normalize("NFC", stem)
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "slide"


def assign_ids(paths: Iterable[Path]) -> list[SlideEntry]:
    """Give each path a unique, filesystem-safe slide id derived from its stem."""
    used: set[str] = set()
    entries = []
    for p in paths:
        stem = p.parent.name if p.suffix.lower() == ".dcm" else p.stem
        base = safe_id(stem)
        sid, k = base, 2
        while sid.lower() in used:
            sid, k = f"{base}-{k}", k + 1
        used.add(sid.lower())
        entries.append(SlideEntry(sid, p))
    return entries
