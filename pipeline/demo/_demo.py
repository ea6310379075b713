"""`slidemill demo`: the whole lab workflow on the embedded default, on generated slides with
ground truth and the real sample slide:

    synth (train and held-out sets) → pretrain the encoder on the training slides' tiles
    (self-supervised, no labels) → features → train attention MIL and the mean-pooling baseline
    (k-fold, ensembles) → run both on the held-out set (and ABMIL on the sample slide) → evaluate

Each step is the library function its command calls; each is skipped when its output exists, so
an interrupted demo resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from slidemill.cluster import load_cluster_config
from slidemill.pipeline.cohort import WEIGHTS_FILE, encoder_bundle, pretrain, progress_bar
from slidemill.pipeline.evaluation import EvaluationRun, run_evaluation, synth_truth
from slidemill.pipeline.graph import run_batch
from slidemill.pipeline.synth import write_benchmark_set
from slidemill.schemas import RunSpec
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


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The evaluations the demo wrote, per head."""

    out_of_fold: dict[str, EvaluationRun]
    """Head → cross-validated predictions on the training set."""
    held_out: dict[str, EvaluationRun]
    """Head → the ensemble on the held-out set (with localisation)."""


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
    run_batch(RunSpec(slides=(train_set,), model=bundle, out=features, cluster=cluster,
                      stages="features", show_progress=True))  # fmt: skip
    result = DemoResult({}, {})
    for head in HEADS:
        model = out / f"model-{head}"
        if not (model / TRAINING_JSON).is_file():
            console.print(f"[bold]train[/bold] {head}, {s.folds} folds → {model}")
            config = TrainConfig(
                head=head, n_folds=s.folds, seed=s.seed, lr=5e-4, weight_decay=1e-2,
                max_epochs=60, patience=15,
            )  # fmt: skip
            train_from_features(train_set / "labels.csv", features, model, config)
        run = out / f"run-{head}"
        extra = (sample,) if sample is not None and head == HEADS[0] else ()
        console.print(f"[bold]run[/bold] the {head} ensemble on {1 + len(extra)} input(s) → {run}")
        run_batch(
            RunSpec(slides=(test_set, *extra), model=model, out=run, cluster=cluster,
                    show_progress=True)
        )  # fmt: skip
        console.print(f"[bold]evaluate[/bold] {head}")
        result.out_of_fold[head] = run_evaluation(out / f"report-{head}-out-of-fold", model=model)
        result.held_out[head] = run_evaluation(
            out / f"report-{head}-held-out",
            model=model,
            labels=test_set / "labels.csv",
            results=(run,),
            truth=synth_truth,
        )
    return result
