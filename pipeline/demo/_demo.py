"""`slidemill demo`: the whole lab workflow on the embedded default, on generated slides with
ground truth and the real sample slide:

    synth (train and held-out sets) → pretrain the encoder on the training slides' tiles
    (self-supervised, no labels) → features → train attention MIL and the mean-pooling baseline
    (k-fold, ensembles) → run both on the held-out set (and ABMIL on the sample slide and on
    degraded copies of held-out slides) → evaluate; print each diagnosis with its QC flags

Each step is the library function its command calls; each is skipped when its output exists, so
an interrupted demo resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from slidemill.cluster import load_cluster_config
from slidemill.pipeline.cohort import WEIGHTS_FILE, encoder_bundle, pretrain, progress_bar
from slidemill.pipeline.evaluation import EvaluationRun, run_evaluation, synth_truth
from slidemill.pipeline.graph import BatchReport, batch_progress, run_batch
from slidemill.pipeline.synth import DEGRADATIONS, write_benchmark_set, write_degraded_set
from slidemill.schemas import AnyClusterConfig, RunSpec, SlideResult
from slidemill.schemas.layout import TRAINING_JSON
from slidemill.workers import PretrainConfig, TrainConfig, train_from_features

HEADS = ("abmil_gated", "mean_pool")
"""Attention MIL and, beside it, the baseline that shows what attention adds."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Sizes of the demo: chosen to finish in well under 10 minutes on two cores."""

    n_train: int = 32
    """Labelled slides to train on (half positive)."""
    n_test: int = 16
    """Held-out slides."""
    size: tuple[int, int] = (4000, 3000)
    """Level-0 size of each generated slide at 0.5 µm/px."""
    encoder: str = "histo_cnn"
    """Feature encoder, pretrained here on the training slides' tiles."""
    pretrain_steps: int = 120
    """Self-supervised steps (batches of 128 tiles)."""
    tile_mpp: float = 1.0
    """Tile resolution."""
    tile_px: int = 112
    """Tile size."""
    folds: int = 4
    """Cross-validation folds."""
    seed: int = 0
    """Seed of the slides, the encoder and the training."""
    n_degraded: int = 4
    """Held-out slides of which a degraded copy of each kind (`DEGRADATIONS`) is run."""


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The evaluations the demo wrote, per head, and the attention head's diagnoses."""

    out_of_fold: dict[str, EvaluationRun]
    """Head → cross-validated predictions on the training set."""
    held_out: dict[str, EvaluationRun]
    """Head → the ensemble on the held-out set (with localisation)."""
    diagnoses: tuple[SlideResult, ...] = ()
    """The attention head's results on the held-out set and the sample slide."""
    degraded: tuple[tuple[str, SlideResult], ...] = ()
    """(degradation, result) of the attention head on each degraded copy."""


def run_demo(
    out: Path, sample: Path | None, settings: DemoSettings, console: Console
) -> DemoResult:
    """Run every step into `out`."""
    s = settings
    train_set, test_set = out / "train-set", out / "test-set"
    for folder, n, seed in ((train_set, s.n_train, s.seed), (test_set, s.n_test, s.seed + 1)):
        if not (folder / "labels.csv").is_file():
            console.print(f"[bold]synth[/bold] {n} slides → {folder}")
            write_benchmark_set(folder, n=n, seed=seed, size=s.size)
    encoder_dir = out / "encoder"
    if not encoder_dir.is_dir():
        console.print(
            f"[bold]pretrain[/bold] {s.encoder}, self-supervised on the training slides' tiles "
            f"→ {encoder_dir}"
        )
        with progress_bar(console, s.pretrain_steps) as progress:
            pretrain(
                (train_set,),
                encoder_dir,
                encoder=s.encoder,
                tile_mpp=s.tile_mpp,
                tile_px=s.tile_px,
                config=PretrainConfig(steps=s.pretrain_steps, seed=s.seed),
                progress=progress,
            )
    cluster = load_cluster_config()
    features = out / "features"
    bundle = encoder_bundle(
        features,
        encoder=s.encoder,
        encoder_weights=encoder_dir / WEIGHTS_FILE,
        tile_mpp=s.tile_mpp,
        tile_px=s.tile_px,
        seed=s.seed,
    )
    console.print(f"[bold]features[/bold] {s.encoder} at {s.tile_mpp} µm/px → {features}")
    _run(RunSpec(slides=(train_set,), model=bundle, out=features, cluster=cluster,
                 stages="features"), console)  # fmt: skip
    result = DemoResult({}, {})
    reports: dict[str, BatchReport] = {}
    for head in HEADS:
        model = out / f"model-{head}"
        if not (model / TRAINING_JSON).is_file():
            console.print(f"[bold]train[/bold] {head}, {s.folds} folds → {model}")
            config = TrainConfig(
                head=head, n_folds=s.folds, seed=s.seed, lr=5e-4, weight_decay=1e-2,
                max_epochs=60, patience=15, min_epochs=1, weight_averaging=0,
            )  # fmt: skip
            train_from_features(train_set / "labels.csv", features, model, config)
        run = out / f"run-{head}"
        extra = (sample,) if sample is not None and head == HEADS[0] else ()
        console.print(f"[bold]run[/bold] the {head} ensemble on {1 + len(extra)} input(s) → {run}")
        reports[head] = _run(
            RunSpec(slides=(test_set, *extra), model=model, out=run, cluster=cluster), console
        )
        console.print(f"[bold]evaluate[/bold] {head}")
        result.out_of_fold[head] = run_evaluation(out / f"report-{head}-out-of-fold", model=model)
        result.held_out[head] = run_evaluation(
            out / f"report-{head}-held-out",
            model=model,
            labels=test_set / "labels.csv",
            results=(run,),
            truth=synth_truth,
        )
    degraded = _run_degraded(out, test_set, s, cluster, console)
    diagnoses = reports[HEADS[0]].results
    print_diagnoses(console, diagnoses, degraded)
    return DemoResult(result.out_of_fold, result.held_out, diagnoses, degraded)


def _run_degraded(
    out: Path, test_set: Path, s: DemoSettings, cluster: AnyClusterConfig, console: Console
) -> tuple[tuple[str, SlideResult], ...]:
    """Degraded copies of the first `n_degraded` held-out slides, run with the attention head."""
    if s.n_degraded == 0:
        return ()
    folder = out / "degraded-set"
    sources = sorted(test_set.glob("*.svs"))[: s.n_degraded]
    if not (folder / "degradations.csv").is_file():
        console.print(f"[bold]degrade[/bold] {len(sources)} held-out slides x {DEGRADATIONS}")
        write_degraded_set(sources, folder, DEGRADATIONS, s.seed)
    kind_of = {f"{src.stem}-{kind}": kind for src in sources for kind in DEGRADATIONS}
    run = out / f"run-{HEADS[0]}-degraded"
    console.print(f"[bold]run[/bold] the {HEADS[0]} ensemble on {len(kind_of)} degraded copies")
    report = _run(
        RunSpec(slides=(folder,), model=out / f"model-{HEADS[0]}", out=run, cluster=cluster),
        console,
    )
    return tuple((kind_of[r.slide_id], r) for r in report.results if r.slide_id in kind_of)


def _run(spec: RunSpec, console: Console) -> BatchReport:
    with batch_progress(console) as hooks:
        return run_batch(spec, hooks=hooks)


def print_diagnoses(
    console: Console,
    diagnoses: tuple[SlideResult, ...],
    degraded: tuple[tuple[str, SlideResult], ...],
) -> None:
    """Each diagnosis with its flags, then how many clean slides were flagged and how many
    degraded copies of each kind were flagged."""
    table = Table(title="diagnoses (attention MIL ensemble) and when not to trust them")
    for column in ("slide", "degradation", "label", "p", "flags"):
        table.add_column(column)
    for kind, r in (*(("", r) for r in diagnoses), *degraded):
        p = max(r.probabilities) if r.probabilities else float("nan")
        table.add_row(
            r.slide_id, kind, r.label or r.status, f"{p:.3f}", ";".join(r.flag_codes) or "—"
        )
    console.print(table)
    clean = [r for r in diagnoses if r.slide_id.startswith("synthetic-")]
    line = f"clean held-out slides flagged: {sum(bool(r.flag_codes) for r in clean)}/{len(clean)}"
    for kind in DEGRADATIONS:
        of_kind = [r for k, r in degraded if k == kind]
        if of_kind:
            line += f"; {kind} flagged {sum(bool(r.flag_codes) for r in of_kind)}/{len(of_kind)}"
    console.print(line, highlight=False)
