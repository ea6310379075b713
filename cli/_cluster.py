"""`slidemill cluster …`: check a cluster config, print a shipped example."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def cluster_check(
    config: Annotated[
        Path | None, typer.Argument(help="Config file (default: $SLIDEMILL_CLUSTER_FILE).")
    ] = None,
) -> None:
    """Validate a cluster config and print what it would start (SLURM job scripts, Kubernetes
    resources), starting no worker."""
    from slidemill.cluster import load_cluster_config, preview

    text = preview(load_cluster_config(config))
    typer.echo(text)


def cluster_example(
    name: Annotated[str, typer.Argument(help="local, existing, slurm, kubernetes or cuda.")],
) -> None:
    """Print a shipped example config to start from."""
    from slidemill.cluster import example_config

    typer.echo(example_config(name).read_text(), nl=False)
