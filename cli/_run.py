"""`slidemill run` and `slidemill features`: a batch of slides through the Dask graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slidemill.cli._errors import EXIT_FAILED, console
from slidemill.cli._options import (
    BatchSize,
    ClusterFile,
    EncoderFile,
    EncoderName,
    FallbackMpp,
    Force,
    KeepJpeg,
    KeepTiles,
    MinTissue,
    Overlap,
    Progress,
    Retries,
    Scheduler,
    TilesPerTask,
    Workers,
    WorkerTimeout,
)
from slidemill.schemas import QCMode, RunSpec, TissueMethod, validated


def _run_and_report(
    cluster_file: Path | None,
    scheduler: str | None,
    workers: int | None,
    fail_on_flags: bool = False,
    **spec: Any,
) -> None:
    """Build the RunSpec, run the batch, print its table; exit 1 when a slide failed (or, with
    `fail_on_flags`, was flagged)."""
    from slidemill.cluster import load_cluster_config
    from slidemill.pipeline.graph import run_batch

    cluster_config = load_cluster_config(cluster_file, scheduler=scheduler, n_workers=workers)
    run_spec = validated(RunSpec, cluster=cluster_config, **spec)
    report = run_batch(run_spec, on_dashboard=lambda url: console.print(f"dashboard: {url}"))
    table = Table("slide", "status", "label", "tiles", "flags", "error")
    for r in report.results:
        flags = ";".join(r.flag_codes)
        table.add_row(r.slide_id, r.status, r.label or "", str(r.n_tiles), flags, r.error or "")
    flagged = [r.slide_id for r in report.results if r.flag_codes]
    console.print(table)
    if report.kept:
        console.print(
            f"kept {len(report.kept)} slide(s) already done with the same inputs "
            "(--force redoes them)"
        )
    if report.stopped:
        console.print(f"[red]stopped:[/red] {report.stopped}", highlight=False, soft_wrap=True)
    console.print(f"results: {report.results_csv}")
    if flagged:
        console.print(
            f"{len(flagged)} slide(s) flagged by QC: a person should look before trusting "
            "their diagnosis (result.json's qc says why)"
        )
    if report.n_failed or (fail_on_flags and flagged):
        raise typer.Exit(EXIT_FAILED)


def run(
    slides: Annotated[list[Path], typer.Argument(help="Slide files and/or folders of slides.")],
    model: Annotated[Path, typer.Option(help="Model bundle, or a `slidemill train` folder.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    cluster_file: ClusterFile = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    mpp: FallbackMpp = None,
    overlap: Overlap = 0,
    min_tissue: MinTissue = 0.25,
    tissue_method: Annotated[TissueMethod, typer.Option()] = TissueMethod.OTSU_SATURATION,
    tiles_per_task: TilesPerTask = 256,
    batch_size: BatchSize = 64,
    retries: Retries = 2,
    force: Force = False,
    keep_tiles: KeepTiles = False,
    keep_jpeg: KeepJpeg = None,
    worker_timeout: WorkerTimeout = 300.0,
    progress: Progress = True,
    qc: Annotated[
        QCMode,
        typer.Option(
            help="Slide QC: flag slides (blur, ink, not brightfield, out of distribution), "
            "also exclude failing tiles from the MIL head, or off."
        ),
    ] = QCMode.FLAG,
    fail_on_flags: Annotated[
        bool,
        typer.Option("--fail-on-flags", help="Exit with status 1 when any slide is flagged by QC."),
    ] = False,
) -> None:
    """Run a batch of slides through tissue detection, tiling, the model and heatmaps.

    Exits with status 1 when any slide failed (skipped slides, with no tissue, do not count),
    and with --fail-on-flags also when any slide is flagged; a flagged slide keeps its label.
    """
    _run_and_report(
        cluster_file,
        scheduler,
        workers,
        fail_on_flags,
        qc=qc,
        slides=tuple(slides),
        model=model,
        out=out,
        fallback_mpp=mpp,
        overlap_px=overlap,
        min_tissue_fraction=min_tissue,
        tissue_method=tissue_method,
        tiles_per_task=tiles_per_task,
        batch_size=batch_size,
        retries=retries,
        force=force,
        keep_tiles=keep_tiles,
        keep_jpeg=keep_jpeg,
        worker_timeout_s=worker_timeout,
        show_progress=progress,
    )


def features(
    slides: Annotated[list[Path], typer.Argument(help="Slide files and/or folders of slides.")],
    out: Annotated[Path, typer.Option(help="Features folder (one encoder and tiling each).")],
    encoder: EncoderName = "resnet18",
    encoder_weights: Annotated[
        Path | None, typer.Option(help="Local weights file for the encoder (default: random).")
    ] = None,
    encoder_file: EncoderFile = None,
    tile_mpp: Annotated[float, typer.Option(help="µm/px of the tiles.")] = 0.5,
    tile_px: Annotated[int, typer.Option(help="Tile edge in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Seed of a random encoder.")] = 0,
    cluster_file: ClusterFile = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    mpp: FallbackMpp = None,
    overlap: Overlap = 0,
    min_tissue: MinTissue = 0.25,
    tiles_per_task: TilesPerTask = 256,
    batch_size: BatchSize = 64,
    retries: Retries = 2,
    force: Force = False,
    keep_tiles: KeepTiles = False,
    keep_jpeg: KeepJpeg = None,
    worker_timeout: WorkerTimeout = 300.0,
    progress: Progress = True,
) -> None:
    """Tile slides and run the encoder only, keeping features for `slidemill train`."""
    from slidemill.pipeline.cohort import encoder_bundle

    bundle = encoder_bundle(
        out,
        encoder=encoder,
        encoder_weights=encoder_weights,
        tile_mpp=tile_mpp,
        tile_px=tile_px,
        seed=seed,
        encoder_file=encoder_file,
    )
    _run_and_report(
        cluster_file,
        scheduler,
        workers,
        slides=tuple(slides),
        model=bundle,
        out=out,
        stages="features",
        fallback_mpp=mpp,
        overlap_px=overlap,
        min_tissue_fraction=min_tissue,
        tiles_per_task=tiles_per_task,
        batch_size=batch_size,
        retries=retries,
        force=force,
        keep_tiles=keep_tiles,
        keep_jpeg=keep_jpeg,
        worker_timeout_s=worker_timeout,
        show_progress=progress,
    )
