"""`slidemill explain`: why the model said so, for a run's slides (Shapley values of their
regions, on the workers that hold the model), written as each slide's explain.zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from slidemill.cli._errors import EXIT_FAILED, console
from slidemill.cli._options import ClusterFile, Scheduler, Workers

# The defaults are `ExplainSettings`' (tests/cli/test_explain_cli.py checks they agree): this
# module is imported by `slidemill --help`, which must not wait for PyTorch.
BUDGET = 64
MAX_PLAYERS = 64


def explain(
    run_dir: Annotated[Path, typer.Argument(help="A `slidemill run` output folder.")],
    model: Annotated[
        Path, typer.Option(help="The model bundle (or `slidemill train` folder) the run used.")
    ],
    slides: Annotated[
        list[str] | None,
        typer.Option("--slides", help="A slide id to explain (repeatable; default: every one)."),
    ] = None,
    budget: Annotated[
        int,
        typer.Option(
            min=1, help="Random orders of each slide's regions averaged (exact when P! ≤ this)."
        ),
    ] = BUDGET,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the orders.")] = 0,
    max_players: Annotated[
        int, typer.Option(min=1, help="Regions a slide's tiles are grouped into, at most.")
    ] = MAX_PLAYERS,
    target: Annotated[
        str | None,
        typer.Option(
            help="The class explained (default: the positive class of two, else each slide's "
            "predicted class)."
        ),
    ] = None,
    cluster_file: ClusterFile = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
) -> None:
    """Explain a run's slides: each region's Shapley value for the slide's log-odds (absent
    tiles removed from the bag), the faithfulness of attention, tile scores and Shapley values
    (deletion and insertion AUC), and, for `handcrafted` encoders, the features that moved the
    top regions. Writes <slide>/explain.zarr and adds an "explanation" layer to the viewer and
    the export files. Exits with status 1 when a slide could not be explained."""
    from slidemill.cluster import load_cluster_config
    from slidemill.pipeline.explain import explain_run
    from slidemill.workers.explain import ExplainSettings

    cluster = load_cluster_config(cluster_file, scheduler=scheduler, n_workers=workers)
    settings = ExplainSettings(budget=budget, seed=seed, max_players=max_players)
    report = explain_run(
        run_dir,
        model,
        slides=tuple(slides or ()),
        settings=settings,
        target=target,
        cluster=cluster,
    )
    table = Table(
        "slide",
        "tiles",
        "regions",
        "log-odds",
        "empty + Σ Shapley",
        "deletion AUC: attention / tile score / Shapley",
        "s",
    )
    for e in report.explained:
        kinds = ("attention", "tile_score", "shapley")
        auc = " / ".join(f"{e.faithfulness[k][0]:.3f}" for k in kinds)
        table.add_row(
            e.slide_id,
            str(e.n_tiles),
            str(e.n_players),
            f"{e.full_log_odds:.3f}",
            f"{e.shapley_sum + e.empty_log_odds:.3f}",
            auc,
            f"{e.seconds:.2f}",
        )
    console.print(table, width=max(console.width, 120))
    for failure in report.failed:
        line = f"[red]failed:[/red] {escape(failure.slide_id)}: {escape(failure.error)}"
        console.print(line, highlight=False, soft_wrap=True)
    console.print(
        f"explained {len(report.explained)} slide(s), {len(report.failed)} failed, "
        f"{len(report.skipped)} with nothing to explain",
        highlight=False,
    )
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
