"""`slidemill demo`: the whole lab workflow on the embedded default, on generated slides with
ground truth and the real sample slide:

    synth (train and held-out sets) → features → train (k-fold, ensemble)
    → run the ensemble on the held-out set and the sample slide → evaluate

Each step is the library function its command calls; each is skipped when its output exists, so
an interrupted demo resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from cluster import load_cluster_config
from pipeline._batch import run_batch
from pipeline._evalrun import EvaluationRun, run_evaluation, synth_truth
from pipeline._features import encoder_bundle
from pipeline._synth import write_benchmark_set
from schemas import RunSpec
from workers import TrainConfig, train_from_features


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Sizes of the demo: chosen to finish in a few minutes on two cores."""

    n_train: int = 24
    """Labelled slides to train on (half positive)."""
    n_test: int = 8
    """Held-out slides."""
    size: tuple[int, int] = (4000, 3000)
    """Level-0 size of each generated slide at 0.5 µm/px."""
    encoder: str = "resnet18"
    """Feature encoder (random, seeded, saved beside the features)."""
    tile_mpp: float = 1.0
    """Tile resolution."""
    tile_px: int = 112
    """Tile size."""
    folds: int = 4
    """Cross-validation folds."""
    seed: int = 0
    """Seed of the slides, the encoder and the training."""


def run_demo(
    out: Path, sample: Path | None, settings: DemoSettings, console: Console
) -> tuple[EvaluationRun, EvaluationRun]:
    """Run every step into `out`; returns the out-of-fold and held-out evaluations."""
    s = settings
    train_set, test_set = out / "train-set", out / "test-set"
    for folder, n, seed in ((train_set, s.n_train, s.seed), (test_set, s.n_test, s.seed + 1)):
        if not (folder / "labels.csv").is_file():
            console.print(f"[bold]synth[/bold] {n} slides → {folder}")
            write_benchmark_set(folder, n=n, seed=seed, size=s.size)
    cluster = load_cluster_config()
    features = out / "features"
    bundle = encoder_bundle(
        features,
        encoder=s.encoder,
        encoder_weights=None,
        tile_mpp=s.tile_mpp,
        tile_px=s.tile_px,
        seed=s.seed,
    )
    console.print(f"[bold]features[/bold] {s.encoder} at {s.tile_mpp} µm/px → {features}")
    run_batch(RunSpec(slides=(train_set,), model=bundle, out=features, cluster=cluster,
                      stages="features", show_progress=True))  # fmt: skip
    model = out / "model"
    if not (model / "training.json").is_file():
        console.print(f"[bold]train[/bold] abmil_gated, {s.folds} folds → {model}")
        config = TrainConfig(n_folds=s.folds, seed=s.seed, lr=1e-3, max_epochs=60, patience=15)
        train_from_features(train_set / "labels.csv", features, model, config)
    run = out / "run"
    slides = (test_set, *([sample] if sample is not None else []))
    console.print(f"[bold]run[/bold] the ensemble on {len(slides)} input(s) → {run}")
    run_batch(RunSpec(slides=slides, model=model, out=run, cluster=cluster, show_progress=True))
    console.print("[bold]evaluate[/bold]")
    oof = run_evaluation(out / "report-out-of-fold", model=model)
    held = run_evaluation(
        out / "report-held-out",
        model=model,
        labels=test_set / "labels.csv",
        results=(run,),
        truth=synth_truth,
    )
    return oof, held
