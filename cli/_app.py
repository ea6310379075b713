"""The `slidemill` command line: each command parses its options and calls one library function."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from slidemill.pipeline.errors import PipelineError
from slidemill.schemas import RunSpec, TissueMethod, write_json_schemas
from slidemill.workers import WorkerError, init_bundle

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
model_app = typer.Typer(no_args_is_help=True, help="Model bundles.")
app.add_typer(model_app, name="model")
console = Console(stderr=True)


def _class_list(classes: str) -> tuple[str, ...]:
    """`--classes a,b,c` → ("a", "b", "c")."""
    return tuple(c.strip() for c in classes.split(",") if c.strip())


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


# Options shared by the commands that run the graph (`run`, `features`).
ClusterFile = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        help="Cluster config (YAML/TOML): local, existing, slurm, kubernetes or cuda. "
        "Default: $SLIDEMILL_CLUSTER_FILE, else the embedded LocalCluster.",
    ),
]
Scheduler = Annotated[
    str | None, typer.Option(help="tcp://HOST:PORT of an existing Dask scheduler.")
]
Workers = Annotated[
    int | None, typer.Option(min=1, help="Embedded cluster: worker processes (default: cores).")
]
FallbackMpp = Annotated[
    float | None,
    typer.Option(help="µm/px to assume for slides that do not record their resolution."),
]
Overlap = Annotated[int, typer.Option(min=0, help="Tile overlap in pixels.")]
MinTissue = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Minimum tissue fraction of a kept tile.")
]
TilesPerTask = Annotated[int, typer.Option(min=1, help="Tiles per Dask task.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Tiles per encoder batch.")]
Retries = Annotated[int, typer.Option(min=0, max=10, help="Extra attempts of a failed task.")]
Force = Annotated[
    bool, typer.Option(help="Redo every slide, even those already done with the same inputs.")
]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
KeepTiles = Annotated[
    bool,
    typer.Option(
        help="Leave the tile pixels in each slide.zarr (by default they are removed once "
        "encoded; coordinates, features and scores stay)."
    ),
]
KeepJpeg = Annotated[
    bool | None,
    typer.Option(
        "--keep-jpeg/--decode-tiles",
        help="Where tiles are cut from a level stored as JPEG tiles without resizing, keep "
        "those stored tiles undecoded in the store (the encode task decodes them); "
        "--decode-tiles stores RGB. "
        "Default: keep, unless GPU workers run the encoder.",
        show_default=False,
    ),
]
# Options of the commands that build an encoder (`features`, `model init`).
EncoderName = Annotated[
    str,
    typer.Option(
        help="Registered encoder (resnet18, resnet50_trunc, histo_cnn, …), timm:<name> for any "
        "timm model, or torchscript with --encoder-file."
    ),
]
EncoderFile = Annotated[
    Path | None,
    typer.Option(help="TorchScript file (torch.jit.save) for --encoder torchscript."),
]


def _run_and_report(
    cluster_file: Path | None, scheduler: str | None, workers: int | None, **spec: Any
) -> None:
    """Build the RunSpec, run the batch, print its table; exit 1 when a slide failed."""
    from slidemill.cluster import ClusterError, load_cluster_config
    from slidemill.pipeline.graph import run_batch

    try:
        cluster_config = load_cluster_config(cluster_file, scheduler=scheduler, n_workers=workers)
        run_spec = RunSpec(cluster=cluster_config, **spec)
        report = run_batch(run_spec, on_dashboard=lambda url: console.print(f"dashboard: {url}"))
    except (PipelineError, WorkerError, ClusterError, ValueError) as err:
        _fail(str(err))
        return
    table = Table("slide", "status", "label", "tiles", "error")
    for r in report.results:
        table.add_row(r.slide_id, r.status, r.label or "", str(r.n_tiles), r.error or "")
    console.print(table)
    if report.kept:
        console.print(
            f"kept {len(report.kept)} slide(s) already done with the same inputs "
            "(--force redoes them)"
        )
    console.print(f"results: {report.results_csv}")
    if report.n_failed:
        raise typer.Exit(1)


@app.command()
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
    progress: Progress = True,
) -> None:
    """Run a batch of slides through tissue detection, tiling, the model and heatmaps.

    Exits with status 1 when any slide failed (skipped slides, with no tissue, do not count).
    """
    _run_and_report(
        cluster_file,
        scheduler,
        workers,
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
        show_progress=progress,
    )


@app.command()
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
    progress: Progress = True,
) -> None:
    """Tile slides and run the encoder only, keeping features for `slidemill train`."""
    from slidemill.pipeline.cohort import encoder_bundle

    try:
        bundle = encoder_bundle(
            out,
            encoder=encoder,
            encoder_weights=encoder_weights,
            tile_mpp=tile_mpp,
            tile_px=tile_px,
            seed=seed,
            encoder_file=encoder_file,
        )
    except (PipelineError, WorkerError, ValueError) as err:
        _fail(str(err))
        return
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
        show_progress=progress,
    )


@model_app.command("init")
def model_init(
    out: Annotated[Path, typer.Option(help="New bundle folder.")],
    encoder: EncoderName = "resnet18",
    encoder_file: EncoderFile = None,
    head: Annotated[str, typer.Option(help="Registered MIL head.")] = "abmil_gated",
    classes: Annotated[
        str, typer.Option(help="Comma-separated class names.")
    ] = "negative,positive",
    mpp: Annotated[float, typer.Option(help="µm/px the model works at.")] = 0.5,
    tile_px: Annotated[int, typer.Option(help="Tile edge in pixels.")] = 224,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a bundle with seeded random weights, for trying the plumbing."""
    try:
        manifest = init_bundle(
            out,
            encoder=encoder,
            head=head,
            class_names=_class_list(classes),
            mpp=mpp,
            tile_px=tile_px,
            seed=seed,
            encoder_file=encoder_file,
        )
    except (WorkerError, ValueError) as err:
        _fail(str(err))
        return
    console.print(f"wrote {out} ({manifest.encoder} + {manifest.head}, {manifest.feature_dim}-d)")


@model_app.command("import-clam")
def model_import_clam(
    checkpoint: Annotated[Path, typer.Argument(help="CLAM state dict saved with torch.save.")],
    clam_type: Annotated[str, typer.Option("--type", help="clam_sb or clam_mb.")],
    size: Annotated[str, typer.Option(help="CLAM model size: small or big.")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names, in CLAM's order.")],
    out: Annotated[Path, typer.Option(help="New bundle folder.")],
    encoder: Annotated[
        str, typer.Option(help="Registered encoder the CLAM features came from.")
    ] = "resnet50_trunc",
    encoder_weights: Annotated[
        Path | None,
        typer.Option(help="Local state dict for the encoder (else it is randomly initialised)."),
    ] = None,
    mpp: Annotated[float, typer.Option(help="µm/px the model works at.")] = 0.5,
    tile_px: Annotated[int, typer.Option(help="Tile edge in pixels.")] = 224,
) -> None:
    """Write a bundle from a CLAM (mahmoodlab/CLAM) checkpoint of a gated CLAM-SB or -MB model."""
    from typing import cast

    from slidemill.workers.models import ClamSize, ClamType, import_clam_checkpoint

    try:
        manifest = import_clam_checkpoint(
            checkpoint,
            out,
            clam_type=cast(ClamType, clam_type),  # the library refuses other values
            size=cast(ClamSize, size),
            class_names=_class_list(classes),
            encoder=encoder,
            encoder_weights=encoder_weights,
            input_mpp=mpp,
            tile_px=tile_px,
        )
    except (WorkerError, ValueError) as err:
        _fail(str(err))
        return
    weights = encoder_weights.name if encoder_weights else "random, give --encoder-weights"
    console.print(
        f"wrote {out} ({manifest.encoder} + {manifest.head}, {manifest.feature_dim}-d; "
        f"encoder weights: {weights})",
        highlight=False,
        soft_wrap=True,
    )


@model_app.command("pretrain")
def model_pretrain(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files or folders (no labels needed).")
    ],
    out: Annotated[Path, typer.Option(help="New folder for the encoder weights and report.")],
    encoder: Annotated[str, typer.Option(help="Registered encoder to train from scratch.")] = (
        "histo_cnn"
    ),
    tile_mpp: Annotated[
        float, typer.Option(help="µm/px of the tiles (give features the same).")
    ] = 1.0,
    tile_px: Annotated[int, typer.Option(help="Tile edge in pixels.")] = 112,
    tiles_per_slide: Annotated[int, typer.Option(min=1, help="Tiles sampled per slide.")] = 256,
    max_tiles: Annotated[
        int, typer.Option(min=2, help="Cap on all tiles (held in memory); fewer per slide beyond.")
    ] = 50_000,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 150,
    batch_size: Annotated[int, typer.Option(min=2, help="Tiles per step (two views each).")] = 128,
    mpp: FallbackMpp = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train an encoder self-supervised (SimCLR with stain jitter) on tiles of your own slides,
    for `slidemill features --encoder-weights OUT/encoder.safetensors`."""
    from slidemill.pipeline.cohort import WEIGHTS_FILE, pretrain, progress_bar
    from slidemill.workers import PretrainConfig

    try:
        config = PretrainConfig(steps=steps, batch_size=batch_size, seed=seed)
        with progress_bar(console, steps) as progress:
            sample, report = pretrain(
                slides, out, encoder=encoder, tile_mpp=tile_mpp, tile_px=tile_px,
                tiles_per_slide=tiles_per_slide, max_tiles=max_tiles, config=config,
                fallback_mpp=mpp,
                progress=progress,
            )  # fmt: skip
    except (PipelineError, WorkerError, ValueError) as err:
        _fail(str(err))
        return
    for _, reason in sample.left_out:
        console.print(f"[yellow]left out[/yellow] {reason}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {out}: {encoder} on {report.n_tiles} tiles of {len(sample.used)} slide(s), "
        f"loss {report.losses[0]:.3f} → {report.losses[-1]:.3f} in {report.seconds:.0f} s on "
        f"{report.device}\nnext: slidemill features SLIDES --out FEATURES --encoder {encoder} "
        f"--encoder-weights {out / WEIGHTS_FILE} --tile-mpp {tile_mpp} --tile-px {tile_px}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def train(
    labels: Annotated[
        Path, typer.Option(help="CSV with a label column and a slide_id and/or path column.")
    ],
    features: Annotated[Path, typer.Option(help="Features folder from `slidemill features`.")],
    out: Annotated[
        Path, typer.Option(help="New folder: a bundle per fold, the ensemble, training.json.")
    ],
    head: Annotated[str, typer.Option(help="Registered MIL head to train.")] = "abmil_gated",
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds.")] = 5,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names in order (default: the sorted labels)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs per fold.")] = 50,
    patience: Annotated[
        int, typer.Option(min=1, help="Stop a fold after this many epochs without improvement.")
    ] = 8,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 2e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    seed: Annotated[int, typer.Option(min=0, help="Seed of everything random.")] = 0,
    head_kwargs: Annotated[
        str | None,
        typer.Option(help="The head's settings as a JSON object, e.g. '{\"dropout\": 0.1}'."),
    ] = None,
) -> None:
    """Train a MIL head on stored features with stratified k-fold cross-validation: a bundle per
    fold, their ensemble (give the folder to `run --model`), and out-of-fold predictions."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
    from rich.text import Text

    from slidemill.workers.training import EpochReport, LabelMatch, TrainConfig, train_from_features

    kwargs: dict[str, int | float | str | bool] = {}
    if head_kwargs is not None:
        try:
            parsed = json.loads(head_kwargs)
        except json.JSONDecodeError as err:
            _fail(f"--head-kwargs is not JSON: {err}")
            return
        if not isinstance(parsed, dict):
            _fail(f"--head-kwargs must be a JSON object, got {head_kwargs!r}")
            return
        kwargs = parsed
    class_names = None
    if classes is not None:
        class_names = _class_list(classes)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    )
    bars: dict[int, TaskID] = {}

    def show_labels(match: LabelMatch) -> None:
        for line in match.warnings():
            progress.console.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True)
        counts = ", ".join(f"{c} {n}" for c, n in match.class_counts.items())
        progress.console.print(
            Text(f"training on {len(match.labels)} slides ({counts})"), soft_wrap=True
        )

    def show_epoch(r: EpochReport) -> None:
        if r.fold not in bars:
            bars[r.fold] = progress.add_task("", total=r.max_epochs)
        progress.update(
            bars[r.fold],
            completed=r.epoch,
            total=r.epoch if r.last else r.max_epochs,
            description=f"fold {r.fold + 1}/{r.n_folds}  epoch {r.epoch}  "
            f"train {r.train_loss:.4f}  val {r.val_loss:.4f}  "
            f"best {r.best_val_loss:.4f} (epoch {r.best_epoch})",
        )

    try:
        config = TrainConfig(
            head=head,
            head_kwargs=kwargs,
            n_folds=folds,
            max_epochs=epochs,
            patience=patience,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
        )
        with progress:
            report = train_from_features(
                labels,
                features,
                out,
                config,
                classes=class_names,
                on_labels=show_labels,
                on_epoch=show_epoch,
            )
    except (WorkerError, ValueError) as err:
        _fail(str(err))
        return

    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    table = Table(
        "fold",
        "train",
        "val",
        "test",
        "epochs",
        "best",
        "val loss",
        "test loss",
        "test AUROC",
        "threshold",
        title="held-out folds",
    )
    for f in report.cv.folds:
        t = f.training
        table.add_row(
            str(f.fold),
            str(len(f.train_ids)),
            str(len(f.val_ids)),
            str(len(f.test_ids)),
            str(t.epochs_run),
            str(t.best_epoch),
            num(t.best_val_loss),
            num(f.test_loss),
            num(f.test_auroc),
            num(t.threshold),
        )
    console.print(table)
    console.print(
        f"out-of-fold AUROC {num(report.cv.oof_auroc)} over {len(report.cv.slide_ids)} slides "
        f"({report.seconds:.1f} s on {report.cv.device})",
        highlight=False,
    )
    console.print(
        f"wrote {report.out}: fold bundles, training.json, oof_predictions.csv, and the "
        f"ensemble bundle {report.ensemble_dir}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="A `slidemill train` folder, or a model bundle.")],
    out: Annotated[Path, typer.Option(help="Folder for evaluation.json, PNGs, report.html.")],
    labels: Annotated[
        Path | None, typer.Option(help="Labels CSV (slide_id and/or path, label).")
    ] = None,
    results: Annotated[
        list[Path] | None,
        typer.Option(help="`slidemill run` output folder(s) of held-out slides (repeatable)."),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples for AUROC CIs.")
    ] = 1000,
) -> None:
    """Score a model: a training folder's out-of-fold predictions, or held-out run outputs
    against labels (and, where `slidemill synth` ground truth lies beside the slides, the
    heatmaps against the lesion masks). Writes JSON, ROC and calibration plots, and a page."""
    from slidemill.pipeline.evaluation import EvaluationError, run_evaluation, synth_truth

    try:
        run = run_evaluation(
            out, model=model, labels=labels, results=results or (), truth=synth_truth,
            bootstrap=bootstrap,
        )  # fmt: skip
    except (EvaluationError, PipelineError, WorkerError, OSError, KeyError) as err:
        _fail(str(err))
        return
    for line in run.left_out:
        console.print(f"not scored: {line}", highlight=False)
    report = run.evaluation.report
    table = Table("fold", "slides", "AUROC", "balanced acc.", "macro F1")
    rows = [(f.fold, f) for f in report.folds] + [("pooled", report.pooled)]
    for name, m in rows:
        table.add_row(
            name, str(m.n_slides), f"{m.auroc:.3f}", f"{m.balanced_accuracy:.3f}",
            f"{m.macro_f1:.3f}",
        )  # fmt: skip
    console.print(table)
    if report.localisation is not None:
        console.print(f"lesion localisation AUROC (tiles): {report.localisation.pooled_auroc:.3f}")
    console.print(f"report: {run.files['report.html']}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path(
        "demo-out"
    ),
    sample: Annotated[
        Path | None, typer.Option(help="A real slide to run too (default: the sample slide).")
    ] = None,
    n_train: Annotated[int, typer.Option(min=8, help="Generated training slides.")] = 32,
    n_test: Annotated[int, typer.Option(min=2, help="Generated held-out slides.")] = 16,
    pretrain_steps: Annotated[
        int, typer.Option(min=1, help="Self-supervised steps for the encoder.")
    ] = 120,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The whole workflow on the embedded default: synth → pretrain the encoder → features →
    train ABMIL and the mean-pooling baseline → run on held-out slides and the sample slide →
    evaluate. Steps already done are kept."""
    from slidemill.pipeline.bench import default_sample
    from slidemill.pipeline.demo import DemoSettings, run_demo
    from slidemill.pipeline.evaluation import EvaluationError

    settings = DemoSettings(
        n_train=n_train, n_test=n_test, pretrain_steps=pretrain_steps, seed=seed
    )
    try:
        result = run_demo(out, sample or default_sample(), settings, console)
    except (EvaluationError, PipelineError, WorkerError, ValueError) as err:
        _fail(str(err))
        return
    table = Table(title="slidemill demo: figures on generated slides with ground truth")
    for column in ("head", "out-of-fold AUROC", "held-out AUROC", "held-out balanced acc.",
                   "lesion localisation AUROC"):  # fmt: skip
        table.add_column(column)
    for head, held in result.held_out.items():
        r, oof = held.evaluation.report, result.out_of_fold[head].evaluation.report
        loc = f"{r.localisation.pooled_auroc:.3f}" if r.localisation is not None else "—"
        table.add_row(
            head,
            f"{oof.pooled.auroc:.3f}",
            f"{r.pooled.auroc:.3f}",
            f"{r.pooled.balanced_accuracy:.3f}",
            loc,
        )
    console.print(table)
    for head, held in result.held_out.items():
        console.print(f"{head}: {held.files['report.html']}", soft_wrap=True)


cluster_app = typer.Typer(no_args_is_help=True, help="Cluster configs.")
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("check")
def cluster_check(
    config: Annotated[
        Path | None, typer.Argument(help="Config file (default: $SLIDEMILL_CLUSTER_FILE).")
    ] = None,
) -> None:
    """Validate a cluster config and print what it would start (SLURM job scripts, Kubernetes
    resources), starting no worker."""
    from slidemill.cluster import ClusterError, load_cluster_config, preview

    try:
        text = preview(load_cluster_config(config))
    except (ClusterError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(text)


@cluster_app.command("example")
def cluster_example(
    name: Annotated[str, typer.Argument(help="local, existing, slurm, kubernetes or cuda.")],
) -> None:
    """Print a shipped example config to start from."""
    from slidemill.cluster import ClusterError, example_config

    try:
        typer.echo(example_config(name).read_text(), nl=False)
    except ClusterError as err:
        _fail(str(err))


@app.command()
def schemas(out: Annotated[Path, typer.Option(help="Folder for the JSON Schema files.")]) -> None:
    """Export slidemill's contracts as JSON Schema."""
    for path in write_json_schemas(out):
        console.print(str(path))


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder for the generated set.")],
    n: Annotated[int, typer.Option(min=1, help="Number of slides.")] = 20,
    positive_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of the slides that have lesions.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the whole set.")] = 0,
    size: Annotated[
        str, typer.Option(help="Level-0 size WIDTHxHEIGHT in pixels, at 0.5 µm/px.")
    ] = "6000x4000",
) -> None:
    """Generate a labelled benchmark with ground truth: pyramidal SVS slides (JPEG tiles,
    0.5/2/8 µm/px) with planted lesions and look-alikes, `<stem>.mask.png` (lesions at 8 µm/px)
    and `<stem>.truth.json` beside each, and `labels.csv`."""
    import time

    from slidemill.pipeline.synth import parse_size, write_benchmark_set

    start = time.perf_counter()
    try:
        slides = write_benchmark_set(
            out, n=n, positive_fraction=positive_fraction, seed=seed, size=parse_size(size)
        )
    except ValueError as err:
        _fail(str(err))
        return
    for s in slides:
        console.print(f"{s.path}  {s.label}", highlight=False)
    positives = sum(s.label == "positive" for s in slides)
    console.print(
        f"{len(slides)} slides ({positives} positive), labels in {out / 'labels.csv'}, "
        f"{time.perf_counter() - start:.1f} s",
        highlight=False,
    )


@app.command()
def bench(
    slide: Annotated[
        Path | None, typer.Option(help="Slide to measure (default: the sample).")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Time budget per single-process figure.")] = 5.0,
    work: Annotated[
        Path, typer.Option(help="Folder for the generated large slide (kept) and scratch.")
    ] = Path(".slidemill-bench"),
    large: Annotated[
        str, typer.Option(help="Size WxH of the generated large slide; 'none' to skip it.")
    ] = "50000x20000",
    pipeline: Annotated[bool, typer.Option(help="Also time whole runs on 1 and 2 workers.")] = True,
) -> None:
    """Benchmark: tiling against the JPEG decode limit and a naive OpenSlide loop, whole runs on
    1 and 2 workers, and peak worker memory, on the sample slide and a gigapixel one."""
    from slidemill.pipeline.bench import default_sample, run_bench

    path = slide or default_sample()
    if path is None:
        _fail("no sample slide found; give one with --slide or set SLIDEMILL_SAMPLE_SLIDE")
        return
    size: tuple[int, int] | None = None
    if large.lower() != "none":
        try:
            w, h = (int(v) for v in large.lower().split("x"))
        except ValueError:
            _fail(f"--large must be WxH (e.g. 50000x20000) or none, not {large!r}")
            return
        size = (w, h)
    out = Console(width=max(Console().width, 120))
    run_bench(path, seconds, out, workdir=work, large_size=size, pipeline=pipeline)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
