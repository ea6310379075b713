"""`slidemill export`: the files QuPath and napari open, and the batch report, for a run folder
written before `run` made them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from slidemill.cli._errors import EXIT_FAILED, console


def export(
    run_dir: Annotated[Path, typer.Argument(help="A `slidemill run` output folder.")],
    force: Annotated[
        bool, typer.Option(help="Rewrite the files of slides that have them, and report.html.")
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Lesion regions are the tiles with P(positive) ≥ this; give the model's "
            "trained threshold (default 0.5).",
        ),
    ] = None,
) -> None:
    """Write heatmap.ome.zarr and qupath.geojson into every done slide's folder that lacks them,
    and report.html when it is missing. A broken slide folder fails alone (exit status 1)."""
    from slidemill.pipeline.export import export_run

    report = export_run(run_dir, force=force, threshold=threshold)
    for failure in report.failed:
        line = f"[red]failed:[/red] {escape(failure.slide_id)}: {escape(failure.error)}"
        console.print(line, highlight=False, soft_wrap=True)
    console.print(
        f"exported {len(report.written)} slide(s), kept {len(report.kept)} that had the files"
        + (" (--force rewrites them)" if report.kept else "")
        + f", {len(report.failed)} failed",
        highlight=False,
    )
    if report.report is not None:
        console.print(f"report: {escape(str(report.report))}", highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
