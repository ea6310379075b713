"""A slide's `explain.zarr` (`slidemill explain`), written whole and read back: the per-tile
explanations beside the slide store, which the viewer draws and the exports add as a layer.
No PyTorch here: the viewer reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from slidemill.pipeline.errors import one_line
from slidemill.pipeline.export._errors import ExportError
from slidemill.pipeline.export._staging import replacing
from slidemill.schemas.layout import (
    EXPLAIN_ATTRS_KEY,
    EXPLAIN_FORMAT,
    EXPLAIN_STORE,
    ExplainArray,
)


@dataclass(frozen=True, slots=True)
class SlideExplanation:
    """One slide's explanation (N tiles in the slide store's order, M tiles with reasons, G
    feature groups)."""

    info: Mapping[str, Any]
    """The attributes: the class explained (`target`), the settings (`budget`, `seed`,
    `max_players`), the summary (`full_log_odds`, `empty_log_odds`, `n_players`, `exact`,
    `permutations`, `seconds`), `faithfulness` (per explanation, deletion and insertion AUC),
    `reason_names` and `model_sha256`."""
    attention: NDArray[np.float32]
    """(N,) the head's attention."""
    tile_score: NDArray[np.float32]
    """(N,) each tile's probability of the explained class."""
    shapley: NDArray[np.float32]
    """(N,) each tile's share of its region's Shapley value (log-odds); NaN outside the bag."""
    region: NDArray[np.int32]
    """(N,) each tile's region; −1 outside the bag."""
    reason_tiles: NDArray[np.int64]
    """(M,) tiles with feature-level reasons."""
    reasons: NDArray[np.float32]
    """(M, G) their Integrated Gradients by feature group."""

    @property
    def target(self) -> str:
        return str(self.info.get("target", ""))

    @property
    def reason_names(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.info.get("reason_names", ()))

    @property
    def max_abs(self) -> float:
        """The largest |Shapley share| of a tile: the colour scale's end (1 when all are 0)."""
        finite = np.abs(self.shapley[np.isfinite(self.shapley)])
        top = float(finite.max()) if finite.size else 0.0
        return top if top > 0 else 1.0

    def reasons_of(self, tile: int, k: int = 3) -> list[tuple[str, float]]:
        """The `k` feature groups that moved tile `tile`'s score most (by |value|), with their
        signed values; empty for a tile without reasons."""
        hit = np.flatnonzero(self.reason_tiles == tile)
        if hit.size == 0 or not self.reasons.size:
            return []
        row = self.reasons[int(hit[0])].astype(np.float64)
        names = self.reason_names
        top = np.argsort(-np.abs(row), kind="stable")[:k]
        return [(names[int(j)], float(row[j])) for j in top]


def write_explanation(
    folder: Path,
    *,
    grid_index: NDArray[np.integer],
    grid_shape: tuple[int, int],
    attention: NDArray[np.floating],
    tile_score: NDArray[np.floating],
    shapley: NDArray[np.floating],
    region: NDArray[np.integer],
    region_shapley: NDArray[np.floating],
    reason_tiles: NDArray[np.integer],
    reasons: NDArray[np.floating],
    info: Mapping[str, Any],
) -> Path:
    """Write `folder/explain.zarr` under a temporary name, then rename it into place (an
    earlier one is replaced only once the new one is whole)."""
    gi = np.asarray(grid_index, dtype=np.int32).reshape(-1, 2)
    per_tile = {
        ExplainArray.ATTENTION: np.asarray(attention, np.float32),
        ExplainArray.TILE_SCORE: np.asarray(tile_score, np.float32),
        ExplainArray.SHAPLEY: np.asarray(shapley, np.float32),
    }
    maps = np.full((len(per_tile), *grid_shape), np.nan, dtype=np.float32)
    for k, values in enumerate(per_tile.values()):
        maps[k, gi[:, 0], gi[:, 1]] = values
    arrays: dict[ExplainArray, NDArray[Any]] = {
        ExplainArray.GRID_INDEX: gi,
        **per_tile,
        ExplainArray.REGION: np.asarray(region, np.int32),
        ExplainArray.REGION_SHAPLEY: np.asarray(region_shapley, np.float64),
        ExplainArray.MAPS: maps,
        ExplainArray.REASON_TILES: np.asarray(reason_tiles, np.int64),
        ExplainArray.REASONS: np.asarray(reasons, np.float32),
    }
    path = folder / EXPLAIN_STORE
    with replacing(path) as tmp:
        root = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        root.attrs[EXPLAIN_ATTRS_KEY] = {"format": EXPLAIN_FORMAT, **info}
        for name, data in arrays.items():
            array = root.create_array(
                name,
                shape=data.shape,
                dtype=data.dtype,
                chunks=tuple(max(1, n) for n in data.shape),
                fill_value=np.nan if data.dtype.kind == "f" else 0,
            )
            if data.size:
                array[...] = data
    return path


def read_explanation(folder: Path) -> SlideExplanation | None:
    """The slide folder's `explain.zarr`, or None when it has none; `ExportError` names it when
    it is unreadable or of another format."""
    path = folder / EXPLAIN_STORE
    if not (path / "zarr.json").is_file():
        return None
    try:
        root = zarr.open_group(store=str(path), mode="r")
        info = dict(root.attrs[EXPLAIN_ATTRS_KEY])  # type: ignore[arg-type]
        if info.get("format") != EXPLAIN_FORMAT:
            raise ExportError(f"{path}: format {info.get('format')!r}, not {EXPLAIN_FORMAT}")

        def read(name: ExplainArray) -> NDArray[Any]:
            array = root[name]
            if not isinstance(array, zarr.Array):
                raise ExportError(f"{path}: {name} is not an array")
            return np.asarray(array[...])

        explanation = SlideExplanation(
            info=info,
            attention=read(ExplainArray.ATTENTION).astype(np.float32, copy=False),
            tile_score=read(ExplainArray.TILE_SCORE).astype(np.float32, copy=False),
            shapley=read(ExplainArray.SHAPLEY).astype(np.float32, copy=False),
            region=read(ExplainArray.REGION).astype(np.int32, copy=False),
            reason_tiles=read(ExplainArray.REASON_TILES).astype(np.int64, copy=False),
            reasons=read(ExplainArray.REASONS).astype(np.float32, copy=False),
        )
    except ExportError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ExportError(f"{path}: cannot read the explanation ({one_line(err)})") from err
    return explanation
