"""`slidemill encoders`: the named foundation-model presets and whether their weights are here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from slidemill.cli._errors import console

HubCache = Annotated[
    Path | None,
    typer.Option(
        help="Hugging Face hub cache to look in (default: $HF_HUB_CACHE, else $HF_HOME/hub, "
        "else ~/.cache/huggingface/hub). Nothing is downloaded."
    ),
]


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
    console.print(table)
    if rows:
        console.print(
            f"looked in {escape(str(rows[0].looked_in.parent))}; nothing is downloaded. "
            "Licences: " + "; ".join(f"{r.preset.name} {escape(r.preset.licence)}" for r in rows),
            highlight=False,
        )
