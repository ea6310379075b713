"""Players of a slide's Shapley game (pure): its tiles grouped into connected regions.

A slide has hundreds to tens of thousands of tiles; Shapley values over single tiles would need
as many players. Tiles are grouped instead: the tile grid is cut into square blocks of `cell` ×
`cell` tiles, and each block's tiles split into their 4-connected parts, so every player is one
connected region of tissue no wider than a block. The finest block that gives at most
`max_players` players is chosen. Tissue in more separate pieces than `max_players` (scattered
fragments) cannot be split that way at any block size: its players are then the blocks
themselves, each possibly in several pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

_FOUR = ndimage.generate_binary_structure(2, 1)
"""4-connectivity: tiles that share an edge."""


@dataclass(frozen=True, slots=True)
class Players:
    """A slide's tiles grouped into players (N tiles, P players)."""

    of_tile: NDArray[np.int32]
    """(N,) the player each tile belongs to, numbered 0 … P−1 in order of their first tile; −1
    for a tile left out of the bag (QC excluded), which is no player's."""
    cell: int
    """Edge of the blocks, in tiles, that no player crosses."""
    connected: bool = True
    """Whether each player is one connected region (else: one block, possibly in pieces)."""

    @property
    def n_players(self) -> int:
        return int(self.of_tile.max(initial=-1)) + 1

    @property
    def sizes(self) -> NDArray[np.int64]:
        """(P,) tiles of each player."""
        kept = self.of_tile[self.of_tile >= 0]
        return np.bincount(kept, minlength=self.n_players).astype(np.int64)

    @property
    def in_bag(self) -> NDArray[np.bool_]:
        """(N,) whether each tile is in the bag (belongs to a player)."""
        return self.of_tile >= 0


def group_tiles(
    grid_index: NDArray[np.integer],
    cell: int,
    keep: NDArray[np.bool_] | None = None,
    *,
    connected: bool = True,
) -> Players:
    """Group the tiles at `grid_index` (N, 2: row, column) into the 4-connected parts of each
    `cell` × `cell` block of the grid (with `connected` False: into the blocks); `keep` (N,)
    leaves the other tiles out (player −1)."""
    if cell < 1:
        raise ValueError(f"cell must be at least 1 tile, got {cell}")
    rc = np.asarray(grid_index, dtype=np.int64).reshape(-1, 2)
    n = rc.shape[0]
    kept = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    of_tile = np.full(n, -1, dtype=np.int64)
    if not kept.any():
        return Players(of_tile.astype(np.int32), cell, connected)
    rows, cols = rc[kept, 0], rc[kept, 1]
    index = np.flatnonzero(kept)
    # one label per (block, connected part): components of the occupied cells, where cells in
    # different blocks are never neighbours
    block = (rows // cell) * (int(cols.max()) // cell + 1) + cols // cell
    label = np.zeros(index.size, dtype=np.int64)
    order = np.argsort(block, kind="stable")
    bounds = np.flatnonzero(np.diff(block[order])) + 1
    next_label = 0
    for members in np.split(order, bounds):
        r, c = rows[members], cols[members]
        r0, c0 = int(r.min()), int(c.min())
        raster = np.zeros((int(r.max()) - r0 + 1, int(c.max()) - c0 + 1), dtype=bool)
        raster[r - r0, c - c0] = True
        if connected:
            parts, count = ndimage.label(raster, structure=_FOUR)
        else:
            parts, count = raster.astype(np.int32), 1
        label[members] = parts[r - r0, c - c0] - 1 + next_label
        next_label += count
    # number players by their first tile, so the numbering depends on the tiles alone
    first = np.full(next_label, n, dtype=np.int64)
    np.minimum.at(first, label, index)
    renumber = np.empty(next_label, dtype=np.int64)
    renumber[np.argsort(first, kind="stable")] = np.arange(next_label)
    of_tile[index] = renumber[label]
    return Players(of_tile.astype(np.int32), cell, connected)


def choose_players(
    grid_index: NDArray[np.integer], max_players: int, keep: NDArray[np.bool_] | None = None
) -> Players:
    """`group_tiles` with the smallest block edge that gives at most `max_players` players;
    connected players when some block edge allows it, else plain blocks."""
    if max_players < 1:
        raise ValueError(f"max_players must be at least 1, got {max_players}")
    rc = np.asarray(grid_index, dtype=np.int64).reshape(-1, 2)
    n = int(np.count_nonzero(keep)) if keep is not None else rc.shape[0]
    # a block holds at most cell² tiles, so any edge below √(n / max_players) leaves more
    # non-empty blocks, hence players, than allowed: start there
    start = max(1, math.isqrt(n // max_players))
    # one block as large as the grid holds every tile: plain blocks always end there
    whole = int(rc.max(initial=0)) + 1
    for connected in (True, False):
        for cell in range(start, whole + 1):
            players = group_tiles(rc, cell, keep, connected=connected)
            if players.n_players <= max_players:
                return players
    return group_tiles(rc, whole, keep, connected=False)  # unreachable: one block, one player
