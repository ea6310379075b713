"""`slidemill run` and `slidemill features`: a batch of slides through the Dask graph."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slidemill.cli._encoders import chosen_encoder
from slidemill.cli._errors import EXIT_FAILED, console
from slidemill.cli._options import (
    QC,
    RUN_DEFAULTS,
    BatchSize,
    ClusterFile,
    EncoderFile,
    EncoderName,
    FailOnFlags,
    FallbackMpp,
    Force,
    HubCache,
    JpegDecode,
    KeepJpeg,
    KeepTiles,
    MinTissue,
    Overlap,
    Progress,
    Quantize,
    Retries,
    Scheduler,
    TileMpp,
    TilePx,
    TilesPerTask,
    Tissue,
    Workers,
    WorkerTimeout,
    run_options,
)
from slidemill.schemas import RunOptions, RunSpec, validated

FLAGGED = (
    "{n} slide(s) flagged by QC: a person should look before trusting their diagnosis "
    "(result.json's qc says why)"
)
"""What `run` and `submit --wait` say of flagged slides."""


def _run_and_report(
    cluster_file: Path | None,
    scheduler: str | None,
    workers: int | None,
    show_progress: bool,
    fail_on_flags: bool = False,
    **spec: Any,
) -> None:
    """Build the RunSpec, run the batch (with a progress bar drawn from its callbacks), print
    its table; exit 1 when a slide failed (or, with `fail_on_flags`, was flagged)."""
    from slidemill.cluster import load_cluster_config
    from slidemill.pipeline.graph import batch_progress, run_batch

    cluster_config = load_cluster_config(cluster_file, scheduler=scheduler, n_workers=workers)
    run_spec = validated(RunSpec, cluster=cluster_config, **spec)
    with ExitStack() as stack:
        hooks = stack.enter_context(batch_progress(console)) if show_progress else None
        report = run_batch(
            run_spec, on_dashboard=lambda url: console.print(f"dashboard: {url}"), hooks=hooks
        )
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
        console.print(FLAGGED.format(n=len(flagged)))
    if report.n_failed or (fail_on_flags and flagged):
        raise typer.Exit(EXIT_FAILED)


def run(
    slides: Annotated[list[Path], typer.Argument(help="Slide files and/or folders of slides.")],
    model: Annotated[Path, typer.Option(help="Model bundle, or a `slidemill train` folder.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    cluster_file: ClusterFile = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
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
    progress: Progress = True,
    qc: QC = RUN_DEFAULTS.qc,
    quantize: Quantize = RUN_DEFAULTS.quantize,
    fail_on_flags: FailOnFlags = False,
) -> None:
    """Run a batch of slides through tissue detection, tiling, the model and heatmaps.

    Exits with status 1 when any slide failed; skipped slides, with no tissue, do not count.
    With --fail-on-flags it also exits with 1 when any slide is flagged by QC.
    A flagged slide keeps its label.
    """
    options = run_options(locals())
    _run_and_report(
        cluster_file,
        scheduler,
        workers,
        progress,
        fail_on_flags,
        slides=tuple(slides),
        model=model,
        out=out,
        **options,
    )


def features(
    slides: Annotated[list[Path], typer.Argument(help="Slide files and/or folders of slides.")],
    out: Annotated[Path, typer.Option(help="Features folder (one encoder and tiling each).")],
    encoder: EncoderName = None,
    encoder_weights: Annotated[
        Path | None,
        typer.Option(
            help="Local weights file for the encoder; for a preset, its publisher's file "
            "(default: found in the Hugging Face cache)."
        ),
    ] = None,
    hub_cache: HubCache = None,
    encoder_file: EncoderFile = None,
    tile_mpp: TileMpp = None,
    tile_px: TilePx = None,
    seed: Annotated[int, typer.Option(help="Seed of a random encoder.")] = 0,
    cluster_file: ClusterFile = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
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
    progress: Progress = True,
    qc: QC = RUN_DEFAULTS.qc,
    quantize: Quantize = RUN_DEFAULTS.quantize,
) -> None:
    """Tile slides and run the encoder only, keeping features for `slidemill train`."""
    options = run_options(locals())
    validated(RunOptions, **options)  # before the encoder bundle is written
    from slidemill.pipeline.cohort import encoder_bundle

    name, tiling = chosen_encoder(encoder, tile_px, tile_mpp, hub_cache)
    bundle = encoder_bundle(
        out,
        encoder=name,
        encoder_weights=encoder_weights,
        tile_mpp=tiling.mpp,
        tile_px=tiling.tile_px,
        seed=seed,
        encoder_file=encoder_file,
        hub_cache=hub_cache,
    )
    _run_and_report(
        cluster_file,
        scheduler,
        workers,
        progress,
        slides=tuple(slides),
        model=bundle,
        out=out,
        stages="features",
        **options,
    )
