"""`slidemill serve` and its clients over HTTP: `submit`, `status`, `cancel`, `schedule …`.

The clients read the service's replies through its response models (`BatchView`, …), loaded
when a reply comes: `slidemill.service` loads the service's rooms, which parsing need not wait
for."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slidemill.cli._errors import EXIT_FAILED, console, fail
from slidemill.cli._options import (
    QC,
    RUN_DEFAULTS,
    BatchSize,
    ClusterFile,
    FailOnFlags,
    FallbackMpp,
    Force,
    JpegDecode,
    KeepJpeg,
    KeepTiles,
    MinTissue,
    Overlap,
    Quantize,
    Retries,
    Scheduler,
    TilesPerTask,
    Tissue,
    Workers,
    WorkerTimeout,
    run_options,
)
from slidemill.cli._run import FLAGGED
from slidemill.schemas import RunOptions, describe, validated

if TYPE_CHECKING:
    from slidemill.service import BatchView

M = TypeVar("M", bound=BaseModel)

Server = Annotated[
    str,
    typer.Option(envvar="SLIDEMILL_SERVER", help="The service's URL ($SLIDEMILL_SERVER)."),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(help="File holding the API token (else $SLIDEMILL_TOKEN)."),
]
_POLL_S = 1.0


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    db: Annotated[
        str | None,
        typer.Option(help="Ledger URL, e.g. postgresql+psycopg://… (default: SQLite in --state)."),
    ] = None,
    allow_root: Annotated[
        list[Path] | None,
        typer.Option(help="A folder slides, models and outputs may come from (repeatable)."),
    ] = None,
    token_file: TokenFile = None,
    max_running: Annotated[int | None, typer.Option(min=1, help="Batches run at once.")] = None,
    state: Annotated[Path | None, typer.Option(help="State folder (the SQLite ledger).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Service config file (YAML or TOML), below env and flags.")
    ] = None,
    cluster_file: ClusterFile = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
) -> None:
    """Run the lab service: the HTTP API (docs at /docs), the job ledger, and the batches on
    one Dask cluster. Binds loopback unless told otherwise; elsewhere it needs a token."""
    from slidemill.cluster import require_extra

    for module in ("fastapi", "uvicorn", "sqlalchemy", "alembic", "croniter"):
        require_extra(module, "service", "slidemill serve")
    from slidemill.service import load_settings
    from slidemill.service import serve as run_service

    settings = load_settings(
        config,
        host=host,
        port=port,
        db=db,
        allow_roots=tuple(p.absolute() for p in allow_root) if allow_root else None,
        token_file=token_file,
        max_running=max_running,
        state_dir=state,
        cluster_file=cluster_file,
        scheduler=scheduler,
        n_workers=workers,
    )
    run_service(settings)


def submit(
    slides: Annotated[list[Path], typer.Argument(help="Slide files and/or folders of slides.")],
    model: Annotated[Path, typer.Option(help="Model bundle, or a `slidemill train` folder.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
    wait: Annotated[bool, typer.Option(help="Follow the batch to its end; exit as `run`.")] = False,
    fallback_mpp: FallbackMpp = RUN_DEFAULTS.fallback_mpp,
    overlap_px: Overlap = RUN_DEFAULTS.overlap_px,
    min_tissue_fraction: MinTissue = RUN_DEFAULTS.min_tissue_fraction,
    tissue_method: Tissue = RUN_DEFAULTS.tissue_method,
    tiles_per_task: TilesPerTask = RUN_DEFAULTS.tiles_per_task,
    batch_size: BatchSize = RUN_DEFAULTS.batch_size,
    retries: Retries = RUN_DEFAULTS.retries,
    force: Force = RUN_DEFAULTS.force,
    keep_tiles: KeepTiles = RUN_DEFAULTS.keep_tiles,
    keep_jpeg: KeepJpeg = RUN_DEFAULTS.keep_jpeg,
    jpeg_decode: JpegDecode = RUN_DEFAULTS.jpeg_decode,
    worker_timeout_s: WorkerTimeout = RUN_DEFAULTS.worker_timeout_s,
    qc: QC = RUN_DEFAULTS.qc,
    quantize: Quantize = RUN_DEFAULTS.quantize,
    fail_on_flags: FailOnFlags = False,
) -> None:
    """Submit a batch to the service and print its id; with --wait, follow it to the end.

    With --wait it exits as `run` does, with status 1 when any slide failed.
    With --fail-on-flags it also exits with 1 when any slide is flagged by QC.
    """
    # checked here as the service will check them (one line, exit 2): a value JSON cannot
    # carry (inf, nan) never reaches the wire
    options = validated(RunOptions, **run_options(locals()))
    if fail_on_flags and not wait:
        fail("--fail-on-flags needs --wait: without it the batch's slides are not followed")
    from slidemill.service import BatchView

    body = {
        "slides": [str(s.absolute()) for s in slides],
        "model": str(model.absolute()),
        "out": str(out.absolute()),
        **options.model_dump(mode="json"),
    }
    batch = _call(BatchView, "POST", server, "/api/batches", token_file, json=body)
    typer.echo(batch.id)
    if wait:
        _follow(server, batch.id, token_file, fail_on_flags)


def status(
    batch_id: Annotated[
        str | None, typer.Argument(help="A batch id (default: the latest).")
    ] = None,
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
) -> None:
    """A batch's slides, or the latest batches."""
    from slidemill.service import BatchList, BatchView

    if batch_id is None:
        table = Table("id", "status", "slides", "done", "failed", "created", "origin")
        listed = _call(BatchList, "GET", server, "/api/batches?limit=20", token_file)
        for b in listed.batches:
            table.add_row(
                b.id, b.status, str(b.n_slides), str(b.n_done), str(b.n_failed),
                _iso(b.created_at)[:19], b.origin,
            )  # fmt: skip
        console.print(table)
        return
    _print_slides(_call(BatchView, "GET", server, f"/api/batches/{batch_id}", token_file))


def cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch to cancel.")],
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
) -> None:
    """Cancel a batch: queued, it never runs; running, its unfinished slides stop."""
    from slidemill.service import BatchView

    batch = _call(BatchView, "POST", server, f"/api/batches/{batch_id}/cancel", token_file)
    console.print(f"{batch.id}: cancel requested ({batch.status})")


def _print_slides(batch: BatchView) -> None:
    error = f": {batch.error}" if batch.error else ""
    table = Table(
        "slide",
        "state",
        "label",
        "tiles",
        "error",
        title=f"batch {batch.id} {batch.status}{error}",
    )
    for s in batch.slides or ():
        table.add_row(s.slide_id, s.state, s.label or "", str(s.n_tiles), s.error or "")
    console.print(table)


def _follow(server: str, batch_id: str, token_file: Path | None, fail_on_flags: bool) -> None:
    """Poll the batch with a progress bar until it ends; exit 1 when a slide failed (or, with
    `fail_on_flags`, was flagged by QC), as `run` does."""
    from slidemill.service import BatchView

    progress = Progress(
        TextColumn("[bold]slides"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        bar = progress.add_task("slides", total=None, failed=0)
        while True:
            batch = _call(BatchView, "GET", server, f"/api/batches/{batch_id}", token_file)
            finished = batch.n_done + batch.n_failed + batch.n_skipped
            progress.update(bar, total=batch.n_slides, completed=finished, failed=batch.n_failed)
            if batch.status not in ("queued", "running"):
                break
            time.sleep(_POLL_S)
    _print_slides(batch)
    console.print(f"results: {batch.results_csv}")
    flagged = _flagged(batch) if fail_on_flags else []
    if flagged:
        console.print(FLAGGED.format(n=len(flagged)))
    if batch.n_failed or batch.status != "done" or flagged:
        raise typer.Exit(EXIT_FAILED)


def _flagged(batch: BatchView) -> list[str]:
    """The done slides QC flagged, as the service recorded them."""
    return [s.slide_id for s in batch.slides or () if s.state == "done" and s.flags]


def _iso(at: datetime.datetime | None) -> str:
    """A time as the service's JSON has it (UTC as Z); empty for none."""
    return "" if at is None else at.isoformat().replace("+00:00", "Z")


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            return token_file.read_text().strip().splitlines()[0]
        except (OSError, IndexError):
            fail(f"{token_file}: cannot read a token from it")
    return os.environ.get("SLIDEMILL_TOKEN") or None


def _send(method: str, server: str, path: str, token_file: Path | None, json: Any = None) -> bytes:
    """One request, its reply's body; a refusal is the service's one line and exit 2 (4xx) or 1."""
    from slidemill.cluster import require_extra

    httpx = require_extra("httpx", "service", "the service's clients")
    token = _token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method, server.rstrip("/") + path, json=json, headers=headers, timeout=30
        )
    except httpx.HTTPError as err:
        console.print(f"[red]error:[/red] {server}: {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from err
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        console.print(
            f"[red]error:[/red] {response.status_code}: {detail}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2 if response.status_code < 500 else EXIT_FAILED)
    return response.content


def _call(
    reply: type[M],
    method: str,
    server: str,
    path: str,
    token_file: Path | None,
    json: Any = None,
) -> M:
    """One request, its reply read as the service's response model `reply`; a reply that is not
    one (another version of the service, something else on the port) is one line and exit 1."""
    content = _send(method, server, path, token_file, json=json)
    try:
        return reply.model_validate_json(content)
    except ValidationError as err:
        console.print(
            f"[red]error:[/red] {server}{path}: the reply is not a {reply.__name__}: "
            f"{describe(err)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED) from err


def schedule_add(
    name: Annotated[str, typer.Argument(help="The schedule's name.")],
    cron: Annotated[str, typer.Option(help='Five-field cron, e.g. "0 22 * * *".')],
    inbox: Annotated[Path, typer.Option(help="Folder whose new slides each run takes.")],
    model: Annotated[Path, typer.Option(help="Model bundle, or a `slidemill train` folder.")],
    out: Annotated[str, typer.Option(help="Output folder of a run, e.g. /data/out/{date}.")],
    tz: Annotated[str, typer.Option(help="IANA time zone of the cron.")] = "UTC",
    catch_up: Annotated[
        str, typer.Option(help="After downtime: latest (once), all (each window), or skip.")
    ] = "latest",
    max_attempts: Annotated[int, typer.Option(min=1, help="Runs a failing slide gets.")] = 3,
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
) -> None:
    """Add a nightly schedule: at each cron window, the slides new in the inbox run."""
    body = {
        "name": name, "cron": cron, "tz": tz, "inbox": str(inbox.absolute()),
        "model": str(model.absolute()),
        "out": out if out.startswith("/") else str(Path(out).absolute()),
        "catch_up": catch_up, "max_attempts": max_attempts,
    }  # fmt: skip
    from slidemill.service import ScheduleView

    view = _call(ScheduleView, "POST", server, "/api/schedules", token_file, json=body)
    console.print(f"{view.name}: next run {_iso(view.next_window) or None}", highlight=False)


def schedule_list(server: Server = "http://127.0.0.1:8000", token_file: TokenFile = None) -> None:
    """The schedules, with their last and next runs."""
    from slidemill.service import ScheduleList

    table = Table("name", "cron", "tz", "inbox", "out", "paused", "last", "next")
    for s in _call(ScheduleList, "GET", server, "/api/schedules", token_file).schedules:
        table.add_row(
            s.name, s.cron, s.tz, s.inbox, s.out, "yes" if s.paused else "",
            _iso(s.last_fired)[:16], _iso(s.next_window)[:16],
        )  # fmt: skip
    console.print(table)


def schedule_pause(
    name: Annotated[str, typer.Argument()],
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
) -> None:
    """Pause a schedule: its windows pass without running (resume with `schedule resume`)."""
    from slidemill.service import ScheduleView

    _call(ScheduleView, "POST", server, f"/api/schedules/{name}/pause", token_file)
    console.print(f"{name}: paused")


def schedule_resume(
    name: Annotated[str, typer.Argument()],
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
) -> None:
    """Resume a paused schedule from its next window."""
    from slidemill.service import ScheduleView

    _call(ScheduleView, "POST", server, f"/api/schedules/{name}/resume", token_file)
    console.print(f"{name}: resumed")


def schedule_remove(
    name: Annotated[str, typer.Argument()],
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
) -> None:
    """Remove a schedule (its batches stay in the ledger)."""
    _send("DELETE", server, f"/api/schedules/{name}", token_file)  # 204: no body
    console.print(f"{name}: removed")


def schedule_run_now(
    name: Annotated[str, typer.Argument()],
    server: Server = "http://127.0.0.1:8000",
    token_file: TokenFile = None,
) -> None:
    """Run a schedule once now; prints the batch id, or says the inbox had nothing new."""
    from slidemill.service import RunNow

    queued = _call(RunNow, "POST", server, f"/api/schedules/{name}/run-now", token_file)
    if queued.batch is None:
        console.print(f"{name}: nothing new in the inbox")
    else:
        typer.echo(queued.batch)
