"""The one reader of labels CSVs, and the matching of their rows to slides (by slide id, then
path, then file stem). Training matches them to a features folder, `slidemill evaluate` to run
outputs."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from slidemill.workers.errors import LabelError


class SlideRef(Protocol):
    """What label matching needs of a slide: a features folder's `FeatureSlide`, or a run
    output's result in `slidemill evaluate`."""

    @property
    def path(self) -> str:
        """The slide file's path ('' when unknown)."""
        ...

    @property
    def reason(self) -> str | None:
        """Why the slide cannot be used (no features, not done, ...); None when usable."""
        ...


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One row of a labels CSV."""

    line: int
    """Line number in the file (the header is line 1)."""
    slide_id: str | None
    """The `slide_id` cell, if the column exists and the cell is not empty."""
    path: str | None
    """The `path` cell, if the column exists and the cell is not empty."""
    label: str
    """The `label` cell, stripped ('' when empty)."""

    @property
    def key(self) -> str:
        """How to name the row in a message."""
        return self.slide_id or self.path or f"line {self.line}"


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A CSV row that gives no training slide, and why."""

    line: int
    """Line number in the CSV."""
    key: str
    """The row's slide_id or path."""
    reason: str
    """Why: no slide folder, not done, empty label, ambiguous stem, ..."""


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """Labels matched to slides (a features folder's, or run outputs'), and what did not match."""

    labels: Mapping[str, str]
    """Slide id → label, for every usable slide with a label."""
    class_names: tuple[str, ...]
    """Classes in order: `--classes` when given, else the sorted labels."""
    class_counts: Mapping[str, int]
    """Class → usable slides."""
    matched_by: Mapping[str, int]
    """'slide_id' / 'path' / 'stem' → rows matched that way."""
    unmatched: tuple[Unmatched, ...]
    """CSV rows that give no training slide."""
    unlabelled: tuple[str, ...]
    """Usable slides without a label."""
    duplicates: tuple[str, ...]
    """Rows that repeat a slide already labelled with the same label."""
    n_rows: int
    """Data rows in the CSV."""

    def warnings(self, shown: int = 8) -> list[str]:
        """One line per kind of problem, naming up to `shown` slides each."""

        def few(items: Sequence[str]) -> str:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            return ", ".join(items[:shown]) + more

        out = []
        if self.unmatched:
            out.append(
                f"{len(self.unmatched)} row(s) of the labels CSV give no training slide: "
                + few([f"{u.key} (line {u.line}: {u.reason})" for u in self.unmatched])
            )
        if self.unlabelled:
            out.append(
                f"{len(self.unlabelled)} slide(s) with features have no label and are left "
                f"out: {few(list(self.unlabelled))}"
            )
        if self.duplicates:
            out.append(f"{len(self.duplicates)} duplicate row(s): {few(list(self.duplicates))}")
        return out

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready data (for training.json)."""
        return {
            "n_rows": self.n_rows,
            "n_slides": len(self.labels),
            "class_counts": dict(self.class_counts),
            "matched_by": dict(self.matched_by),
            "unmatched": [asdict(u) for u in self.unmatched],
            "unlabelled": list(self.unlabelled),
            "duplicates": list(self.duplicates),
        }


def read_label_csv(path: Path) -> tuple[LabelRow, ...]:
    """The rows of a labels CSV: a `label` column and a `slide_id` and/or `path` column.

    Header names are matched without case or surrounding spaces; a UTF-8 byte-order mark is
    ignored. Raises `LabelError` naming the file and what is wrong.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise LabelError(f"{path}: no such labels file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(f"{path}: cannot read the labels file ({err})") from err
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            raise LabelError(f"{path}: empty labels file")
        columns = [h.strip().lower() for h in header]
        if "label" not in columns:
            raise LabelError(f"{path}: no 'label' column (columns: {', '.join(columns)})")
        if "slide_id" not in columns and "path" not in columns:
            raise LabelError(f"{path}: needs a 'slide_id' or a 'path' column to name slides")

        def cell(row: list[str], name: str) -> str | None:
            if name not in columns:
                return None
            i = columns.index(name)
            value = row[i].strip() if i < len(row) else ""
            return value or None

        rows = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            line = reader.line_num
            rows.append(
                LabelRow(line, cell(row, "slide_id"), cell(row, "path"), cell(row, "label") or "")
            )
    except csv.Error as err:
        raise LabelError(f"{path}: not a readable CSV ({err})") from err
    if not rows:
        raise LabelError(f"{path}: no rows under the header")
    return tuple(rows)


def _norm(path: str | Path) -> str:
    """An absolute path with `..` and doubled separators folded (no symlinks resolved)."""
    return os.path.normpath(Path(path).absolute())


def match_labels(
    rows: Sequence[LabelRow],
    slides: Mapping[str, SlideRef],
    *,
    classes: Sequence[str] | None = None,
    base: Path | None = None,
) -> LabelMatch:
    """Give each slide (slide id → `SlideRef`) its label from the CSV rows.

    A row names its slide by `slide_id` first, else by `path` (the slide's path, a relative one
    taken from `base`, the CSV's folder), else by the stem of its path (or slide id) matched to
    the stems of the slides' file names. Rows that match nothing, match an unusable slide, or
    match several slides by stem are reported in `unmatched`, and usable slides without a row in
    `unlabelled`. Raises `LabelError` for a label outside `classes`, a slide given two different
    labels (naming the slide and both lines), or fewer than two classes among the usable slides.
    """
    by_path = {_norm(s.path): sid for sid, s in slides.items() if s.path}
    by_stem: dict[str, list[str]] = {}
    for sid, s in slides.items():
        stem = Path(s.path).stem if s.path else sid
        by_stem.setdefault(stem, []).append(sid)
    wanted = tuple(classes) if classes is not None else None
    if wanted is not None and (len(wanted) < 2 or len(set(wanted)) != len(wanted)):
        raise LabelError(f"--classes needs two or more distinct names, got {list(wanted)}")

    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    matched_by = {"slide_id": 0, "path": 0, "stem": 0}
    unmatched: list[Unmatched] = []
    duplicates: list[str] = []
    for row in rows:
        if wanted is not None and row.label and row.label not in wanted:
            raise LabelError(
                f"line {row.line} ({row.key}): label {row.label!r} is not one of the classes "
                f"{', '.join(wanted)}"
            )
        found, how, why = _find_slide(row, slides, by_path, by_stem, base)
        if found is None:
            unmatched.append(Unmatched(row.line, row.key, why))
            continue
        slide = slides[found]
        if slide.reason is not None:
            unmatched.append(Unmatched(row.line, row.key, f"slide {found}: {slide.reason}"))
            continue
        if not row.label:
            unmatched.append(Unmatched(row.line, row.key, "empty label"))
            continue
        matched_by[how] += 1
        if found in labels:
            if labels[found] != row.label:
                raise LabelError(
                    f"slide {found} is labelled {labels[found]!r} on line {first_line[found]} "
                    f"and {row.label!r} on line {row.line}"
                )
            duplicates.append(f"{row.key} (line {row.line} repeats line {first_line[found]})")
            continue
        labels[found] = row.label
        first_line[found] = row.line

    present = sorted(set(labels.values()))
    names = wanted if wanted is not None else tuple(present)
    counts = {c: sum(1 for v in labels.values() if v == c) for c in names}
    if len(present) < 2:
        found_text = f"only {present[0]!r}" if present else "none"
        raise LabelError(
            f"need usable slides of at least 2 classes, found {found_text} among "
            f"{len(labels)} labelled slide(s) ({len(unmatched)} row(s) matched no usable slide)"
        )
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise LabelError(f"no usable slides of class(es) {', '.join(empty)}")
    unlabelled = tuple(
        sid for sid, s in sorted(slides.items()) if s.reason is None and sid not in labels
    )
    return LabelMatch(
        labels=dict(sorted(labels.items())),
        class_names=tuple(names),
        class_counts=counts,
        matched_by=matched_by,
        unmatched=tuple(unmatched),
        unlabelled=unlabelled,
        duplicates=tuple(duplicates),
        n_rows=len(rows),
    )


def _find_slide(
    row: LabelRow,
    slides: Mapping[str, SlideRef],
    by_path: Mapping[str, str],
    by_stem: Mapping[str, list[str]],
    base: Path | None,
) -> tuple[str | None, str, str]:
    """(slide id, how it matched, '') or (None, '', why not)."""
    if row.slide_id is not None and row.slide_id in slides:
        return row.slide_id, "slide_id", ""
    if row.path is not None:
        given = Path(row.path)
        candidates = [given]
        if base is not None and not given.is_absolute():
            candidates.insert(0, base / given)  # relative paths: from the CSV's folder first
        for candidate in candidates:
            hit = by_path.get(_norm(candidate))
            if hit is not None:
                return hit, "path", ""
    stems = {Path(v).stem for v in (row.path, row.slide_id) if v}
    hits = sorted({sid for stem in stems for sid in by_stem.get(stem, [])})
    if len(hits) == 1:
        return hits[0], "stem", ""
    if len(hits) > 1:
        return None, "", f"its stem matches several slides ({', '.join(hits)}); give the slide_id"
    return None, "", "no slide folder with this slide_id, path or stem in the features folder"
