"""The `slidemill` command line: each command parses its options and calls one library function."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec

import typer

from slidemill.cli import (
    _bench,
    _cluster,
    _encoders,
    _explain,
    _export,
    _federated,
    _learn,
    _model,
    _run,
    _service,
    _tools,
    _view,
)
from slidemill.cli._errors import report
from slidemill.schemas import SlidemillError

P = ParamSpec("P")


def _command(function: Callable[P, None]) -> Callable[P, None]:
    """A command whose own errors become one line and their exit status (`_errors`, the one
    place that maps them); anything else propagates with its traceback, as the bug it is."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            function(*args, **kwargs)
        except SlidemillError as err:
            report(err)

    return run


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="slidemill: whole-slide images → tissue → tiles in Zarr → MIL on Dask workers → heatmaps.",
    pretty_exceptions_show_locals=False,
)
app.command()(_command(_run.run))
app.command()(_command(_run.features))
app.command()(_command(_learn.train))
app.command()(_command(_learn.evaluate))
app.command()(_command(_tools.demo))
app.command()(_command(_tools.synth))
app.command()(_command(_tools.schemas))
app.command()(_command(_service.serve))
app.command()(_command(_service.submit))
app.command()(_command(_service.status))
app.command()(_command(_service.cancel))
app.command()(_command(_export.export))
app.command()(_command(_explain.explain))
app.command()(_command(_view.view))
app.command()(_command(_encoders.encoders))
app.command()(_command(_bench.bench))
app.command("bench-gpu")(_command(_bench.bench_gpu))
app.command("bench-encoders")(_command(_bench.bench_encoders))
app.command("bench-learning")(_command(_bench.bench_learning))
app.command("bench-families")(_command(_bench.bench_families))
app.command("bench-federated")(_command(_bench.bench_federated))
app.command("bench-service")(_command(_bench.bench_service))
app.command("bench-viewer")(_command(_bench.bench_viewer))
app.command("bench-explain")(_command(_bench.bench_explain))

model_app = typer.Typer(no_args_is_help=True, help="Model bundles.")
model_app.command("init")(_command(_model.model_init))
model_app.command("import-clam")(_command(_model.model_import_clam))
model_app.command("pretrain")(_command(_model.model_pretrain))
app.add_typer(model_app, name="model")

schedule_app = typer.Typer(no_args_is_help=True, help="Nightly schedules of the lab service.")
schedule_app.command("add")(_command(_service.schedule_add))
schedule_app.command("list")(_command(_service.schedule_list))
schedule_app.command("pause")(_command(_service.schedule_pause))
schedule_app.command("resume")(_command(_service.schedule_resume))
schedule_app.command("remove")(_command(_service.schedule_remove))
schedule_app.command("run-now")(_command(_service.schedule_run_now))
app.add_typer(schedule_app, name="schedule")

cluster_app = typer.Typer(no_args_is_help=True, help="Cluster configs.")
cluster_app.command("check")(_command(_cluster.cluster_check))
cluster_app.command("example")(_command(_cluster.cluster_example))
app.add_typer(cluster_app, name="cluster")

federated_app = typer.Typer(
    no_args_is_help=True, help="Train across sites on Flower: parameters move, slides stay."
)
federated_app.command("serve")(_command(_federated.federated_serve))
federated_app.command("join")(_command(_federated.federated_join))
federated_app.command("keygen")(_command(_federated.federated_keygen))
app.add_typer(federated_app, name="federated")


def main() -> None:
    """The `slidemill` console script."""
    # the handler's own level, not only the root's: Dask loaded later sets its loggers to INFO,
    # and with a root handler in place it adds none of its own for LocalCluster to quieten
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", handlers=[stderr]
    )
    app()
