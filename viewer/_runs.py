"""Run folders as the viewer sees them: which runs it may show (a catalog), the rows of a run's
table, and one slide's results read from its store. Slides are found by id among a run's own
results; nothing here takes a path from a request."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any, Protocol

import numpy as np
import zarr
from cachetools import LRUCache
from numpy.typing import NDArray
from pydantic import ValidationError

from slidemill.pipeline.export import (
    EXPLANATION_CHANNEL,
    ExportError,
    SlideExplanation,
    read_explanation,
)
from slidemill.schemas import SlideResult, SlideStoreAttrs, describe
from slidemill.schemas.layout import (
    EXPLAIN_STORE,
    RESULT_JSON,
    RESULTS_CSV,
    SLIDE_STORE,
    STORE_ATTRS_KEY,
    StoreArray,
)
from slidemill.viewer._geometry import CellGrid, attention_values, index_grid, signed_values
from slidemill.viewer.errors import NotFoundError, UnreadableResultError

# What a slide id or a run key may look like in a URL: no separators, no dot-dot, no NUL.
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@=-]{0,199}$")


@dataclass(frozen=True, slots=True)
class RunRef:
    """A run the viewer may show."""

    key: str
    """Its id in URLs."""
    title: str
    """What the index page calls it."""
    path: Path
    """Its output folder."""


class RunCatalog(Protocol):
    """The runs a viewer shows: the folders given to `slidemill view`, or the service's
    batches."""

    def runs(self) -> Sequence[RunRef]: ...

    def get(self, key: str) -> RunRef | None: ...


class FolderCatalog:
    """Fixed run folders, keyed by folder name (`-2`, `-3`, … when two share one)."""

    def __init__(self, folders: Sequence[Path]) -> None:
        refs: list[RunRef] = []
        taken: set[str] = set()
        for folder in folders:
            folder = folder.resolve()
            base = re.sub(r"[^A-Za-z0-9._+@=-]", "-", folder.name).lstrip(".-") or "run"
            key, n = base, 1
            while key in taken:
                n += 1
                key = f"{base}-{n}"
            taken.add(key)
            refs.append(RunRef(key=key, title=str(folder), path=folder))
        self._refs = tuple(refs)

    def runs(self) -> Sequence[RunRef]:
        return self._refs

    def get(self, key: str) -> RunRef | None:
        return next((r for r in self._refs if r.key == key), None)


class LookupCatalog:
    """Runs looked up on demand (the service's batches: `lookup(key)` → output folder)."""

    def __init__(
        self,
        lookup: Callable[[str], RunRef | None],
        listing: Callable[[], Sequence[RunRef]],
    ) -> None:
        self._lookup = lookup
        self._listing = listing

    def runs(self) -> Sequence[RunRef]:
        return self._listing()

    def get(self, key: str) -> RunRef | None:
        return self._lookup(key) if _KEY.match(key) else None


def check_key(key: str, what: str) -> str:
    """`key` if it can name a run or slide, else NotFoundError (never a path)."""
    if not _KEY.match(key):
        raise NotFoundError(f"no {what} {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class SlideRow:
    """One row of a run's table."""

    slide_id: str
    status: str
    label: str | None
    probabilities: dict[str, float]
    flags: tuple[str, ...]
    """Short codes of the slide's trust flags (`qc.flags` of its result), when it has any."""
    n_tiles: int
    error: str | None
    viewable: bool
    """Whether it has a published store to open."""


def slide_rows(run: Path) -> tuple[tuple[str, ...], list[SlideRow]]:
    """The class names and the rows of a run: the last batch's `results.csv`, then any other
    published slide of the folder (an earlier batch's)."""
    rows: dict[str, SlideRow] = {}
    class_names: tuple[str, ...] = ()
    table = run / RESULTS_CSV
    if table.is_file():
        with table.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            class_names = tuple(c[5:] for c in fields if c.startswith("prob_"))
            for line in reader:
                sid = line.get("slide_id", "")
                if not _KEY.match(sid):
                    continue
                probs = {c: float(line[f"prob_{c}"]) for c in class_names if line.get(f"prob_{c}")}
                flags = tuple(f for f in (line.get("flags") or "").split(";") if f)
                rows[sid] = SlideRow(
                    slide_id=sid,
                    status=line.get("status", ""),
                    label=line.get("label") or None,
                    probabilities=probs,
                    flags=flags,
                    n_tiles=int(line.get("n_tiles") or 0),
                    error=line.get("error") or None,
                    viewable=(run / sid / SLIDE_STORE).is_dir(),
                )
    for result_file in sorted(run.glob(f"*/{RESULT_JSON}")):
        sid = result_file.parent.name
        if sid in rows or not _KEY.match(sid):
            continue
        try:
            result = SlideResult.model_validate_json(result_file.read_text())
        except (OSError, ValueError) as err:
            rows[sid] = SlideRow(sid, "unreadable", None, {}, (), 0, _reason(err), False)
            continue
        class_names = class_names or result.class_names
        rows[sid] = SlideRow(
            slide_id=sid,
            status=result.status,
            label=result.label,
            probabilities=dict(zip(result.class_names, result.probabilities, strict=False)),
            flags=result.flag_codes,
            n_tiles=result.n_tiles,
            error=result.error,
            viewable=(run / sid / SLIDE_STORE).is_dir(),
        )
    return class_names, list(rows.values())


def _reason(err: Exception) -> str:
    """One line for what was wrong with a result file."""
    if isinstance(err, ValidationError):
        return describe(err)
    return (str(err).splitlines() or [type(err).__name__])[0]


@dataclass(frozen=True, slots=True)
class SlideData:
    """What the viewer shows of one published slide, read once from its folder."""

    slide_id: str
    version: int
    """Its result file's or explanation's modification time (ns), the later: a re-run's or a
    new explanation's tiles never come from the cache."""
    result: SlideResult
    flags: tuple[tuple[str, str], ...]
    """(code, reason) of each trust flag."""
    attrs: SlideStoreAttrs
    grid: CellGrid
    heatmap: NDArray[np.float32]
    """(C, rows, cols) tile probabilities on the grid, NaN off tissue."""
    attention_grid: NDArray[np.float32]
    """(rows, cols) attention scaled to the slide's highest tile, NaN off tissue."""
    cell_index: NDArray[np.int32]
    """(rows, cols) tile index of each cell, -1 where none."""
    grid_index: NDArray[np.int32]
    """(N, 2) row, column of each tile."""
    scores: NDArray[np.float32]
    """(N, C) tile probabilities."""
    attention: NDArray[np.float32]
    """(N,) MIL attention."""
    thumbnail: NDArray[np.uint8]
    """(h, w, 3) the slide at the tissue detection's resolution (pyramid pixels only)."""
    explanation: SlideExplanation | None = None
    """Its `slidemill explain` output, None when it was not explained."""
    explanation_grid: NDArray[np.float32] | None = None
    """(rows, cols) Shapley shares mapped for a diverging colormap (0.5 is 0, the ends
    ±`explanation.max_abs`), NaN off tissue; None when not explained."""

    @property
    def slide_path(self) -> Path:
        return Path(self.result.path)

    @property
    def layers(self) -> list[str]:
        """The heatmap layers: each class, `attention`, and `explanation` when explained."""
        extra = [EXPLANATION_CHANNEL] if self.explanation_grid is not None else []
        return [*self.attrs.class_names, "attention", *extra]

    def layer(self, name: str) -> NDArray[np.float32]:
        """The (rows, cols) values of a heatmap layer: a class name, `attention` or
        `explanation`."""
        if name == "attention":
            return self.attention_grid
        if name == EXPLANATION_CHANNEL and self.explanation_grid is not None:
            return self.explanation_grid
        if name in self.attrs.class_names:
            return self.heatmap[self.attrs.class_names.index(name)]
        raise NotFoundError(f"{self.slide_id} has no heatmap layer {name!r}")


def load_slide(run: Path, slide_id: str) -> SlideData:
    """Read a published slide of `run` (its result and store); NotFoundError when `run` has no
    such slide with a heatmap, UnreadableResultError when its files are damaged."""
    check_key(slide_id, "slide")
    folder = run / slide_id
    result_file, store = folder / RESULT_JSON, folder / SLIDE_STORE
    if not result_file.is_file() or not store.is_dir():
        raise NotFoundError(f"run {run.name} has no published slide {slide_id!r}")
    try:
        version = result_file.stat().st_mtime_ns
        result = SlideResult.model_validate_json(result_file.read_text())
        root = zarr.open_group(store=str(store), mode="r")
        attrs = SlideStoreAttrs.model_validate(root.attrs[STORE_ATTRS_KEY])
        arrays = set(root.array_keys())
        if StoreArray.HEATMAP not in arrays:
            raise NotFoundError(f"{slide_id} has no heatmap (a features-only run)")

        def read(name: StoreArray) -> NDArray[Any]:
            array = root[name]
            assert isinstance(array, zarr.Array)  # the layout guarantees it
            return np.asarray(array[...])

        heatmap = read(StoreArray.HEATMAP).astype(np.float32, copy=False)
        grid_index = read(StoreArray.GRID_INDEX).astype(np.int32, copy=False)
        attention = read(StoreArray.ATTENTION).astype(np.float32, copy=False)
        scores = read(StoreArray.SCORES).astype(np.float32, copy=False)
        thumbnail = read(StoreArray.THUMBNAIL)
        explanation = read_explanation(folder)
    except NotFoundError:
        raise
    except ExportError as err:
        raise UnreadableResultError(f"{slide_id}: {_reason(err)}") from err
    except (OSError, ValueError, KeyError) as err:
        raise UnreadableResultError(f"{slide_id}: cannot read its result: {_reason(err)}") from err
    shape = attrs.grid_shape
    flags = result.qc.flags if result.qc is not None else ()
    explanation_grid = None
    if explanation is not None:
        if explanation.shapley.shape != (grid_index.shape[0],):
            raise UnreadableResultError(
                f"{slide_id}: its explanation does not fit its tiles; run `slidemill explain` again"
            )
        explanation_grid = signed_values(
            explanation.shapley, grid_index, shape, explanation.max_abs
        )
    return SlideData(
        slide_id=slide_id,
        version=max(version, explained_at(folder)),
        result=result,
        flags=tuple((str(f.code), f.reason) for f in flags),
        attrs=attrs,
        grid=CellGrid(attrs.tile_size_level0, attrs.stride_level0, shape),
        heatmap=heatmap,
        attention_grid=attention_values(attention, grid_index, shape),
        cell_index=index_grid(grid_index, shape),
        grid_index=grid_index,
        scores=scores,
        attention=attention,
        thumbnail=thumbnail,
        explanation=explanation,
        explanation_grid=explanation_grid,
    )


def explained_at(folder: Path) -> int:
    """When the slide's explanation was written (ns), 0 when it has none."""
    try:
        return (folder / EXPLAIN_STORE / "zarr.json").stat().st_mtime_ns
    except OSError:
        return 0


class SlideDataCache:
    """The last few slides' data, keyed by run folder, slide id, result and explanation mtime
    (a re-run or a new explanation replaces them)."""

    def __init__(self, capacity: int = 16) -> None:
        self._cache: LRUCache[tuple[str, str, int, int], SlideData] = LRUCache(maxsize=capacity)
        self._lock = Lock()

    def get(self, run: Path, slide_id: str) -> SlideData:
        check_key(slide_id, "slide")
        try:
            mtime = (run / slide_id / RESULT_JSON).stat().st_mtime_ns
        except OSError as err:
            raise NotFoundError(f"run {run.name} has no published slide {slide_id!r}") from err
        key = (str(run), slide_id, mtime, explained_at(run / slide_id))
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = load_slide(run, slide_id)
            with self._lock:
                self._cache[key] = found
        return found
