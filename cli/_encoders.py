"""`slidemill encoders`: the named foundation-model presets and whether their weights are here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slidemill.cli._errors import console
from slidemill.cli._options import HubCache

if TYPE_CHECKING:
    from slidemill.workers.models import EncoderTiling


def encoders(hub_cache: HubCache = None) -> None:
    """List the encoder presets (uni, virchow2, …): tile size and resolution they were trained
    at, embedding width, parameters, licence, and whether their weights are in the cache."""
    from slidemill.workers.models import preset_statuses

    rows = preset_statuses(hub_cache)
    table = Table("preset", "tile", "µm/px", "width", "params", "weights")
    for row in rows:
        p = row.preset
        found = (
            f"[green]{escape(row.weights.source)}[/green]"
            if row.weights is not None
            else f"[yellow]missing[/yellow]: {escape(p.hub_id)}"
        )
        table.add_row(
            p.name, f"{p.tile_px} px", f"{p.mpp:g}", str(p.width), f"{p.params / 1e6:,.0f} M",
            found,
        )  # fmt: skip
    # A listing goes to stdout, wide enough that a cache path is never cut to "…" on a narrow
    # terminal; the module's console is stderr's, sized once at import.
    out = Console(width=max(Console().width, 160))
    out.print(table)
    if rows:
        out.print(
            f"looked in {escape(str(rows[0].looked_in.parent))}; nothing is downloaded. "
            "Licences: " + "; ".join(f"{r.preset.name} {escape(r.preset.licence)}" for r in rows),
            highlight=False,
        )


def chosen_encoder(
    encoder: str | None, tile_px: int | None, mpp: float | None, hub_cache: Path | None
) -> tuple[str, EncoderTiling]:
    """The encoder and tiles `features` and `model init` use: those given, else the encoder's
    own (`default_encoder`, `encoder_tiling`); says why in one line where it matters."""
    from slidemill.workers.models import default_encoder, encoder_tiling

    if encoder is None:
        choice = default_encoder(hub_cache)
        if choice.notice is not None:
            console.print(f"[cyan]note:[/cyan] {escape(choice.notice)}", soft_wrap=True)
        encoder = choice.name
    tiling = encoder_tiling(encoder, tile_px, mpp)
    if tiling.warning is not None:
        console.print(f"[yellow]warning:[/yellow] {escape(tiling.warning)}", soft_wrap=True)
    return encoder, tiling
