"""`slidemill train` and `slidemill evaluate`: MIL heads from feature folders, and their scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from slidemill.cli._errors import console, fail
from slidemill.cli._options import class_list

if TYPE_CHECKING:
    from slidemill.workers.training import SelectionReport, TrainingReport

SELECT_HELP = (
    "auto: choose the encoder/head pair by nested cross-validation on these slides among every "
    "--features folder (one per encoder) with each of --heads, report every candidate's "
    "figures, and train the chosen one as without it. Costs folders × heads × --folds × "
    "(--inner-folds + 1) trainings, plus --folds for the chosen one: with 2 folders and the "
    "defaults 2 × 3 × 5 × 4 + 5 = 125 (the inner ones on about half the slides)."
)


def train(
    ctx: typer.Context,
    labels: Annotated[
        Path, typer.Option(help="CSV with a label column and a slide_id and/or path column.")
    ],
    features: Annotated[
        list[Path],
        typer.Option(
            help="Features folder from `slidemill features`; with --select auto, repeat it: one "
            "folder per encoder, all of the same labelled slides."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="New folder: a bundle per fold, the ensemble, training.json.")
    ],
    head: Annotated[
        str,
        typer.Option(
            help="Registered MIL head to train: topk_linear (instance scores, top-k pooling) by "
            "default, abmil_gated for gated attention MIL, mean_pool, …"
        ),
    ] = "topk_linear",
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds.")] = 5,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names in order (default: the sorted labels)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs per fold.")] = 40,
    patience: Annotated[
        int, typer.Option(min=1, help="Stop a fold after this many epochs without improvement.")
    ] = 8,
    min_epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="No fold stops or picks its best epoch before this one (default: --epochs, a "
            "fixed schedule; 1 for plain early stopping).",
        ),
    ] = None,
    smoothing: Annotated[
        int,
        typer.Option(min=1, help="Stop on the mean of the last this-many validation losses."),
    ] = 1,
    weight_averaging: Annotated[
        int,
        typer.Option(
            min=0, help="Keep the mean of the last this-many epochs' weights (0: the best epoch's)."
        ),
    ] = 20,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-2,
    seed: Annotated[int, typer.Option(min=0, help="Seed of everything random.")] = 0,
    head_kwargs: Annotated[
        str | None,
        typer.Option(help="The head's settings as a JSON object, e.g. '{\"dropout\": 0.1}'."),
    ] = None,
    select: Annotated[Literal["auto"] | None, typer.Option(help=SELECT_HELP)] = None,
    heads: Annotated[
        str | None,
        typer.Option(
            help="With --select auto: the comma-separated heads to try on every features folder "
            "(default: topk_linear,abmil_gated,mean_pool)."
        ),
    ] = None,
    inner_folds: Annotated[
        int,
        typer.Option(
            min=2, help="With --select auto: folds of the inner CV inside each of the --folds."
        ),
    ] = 3,
) -> None:
    """Train a MIL head on stored features with stratified k-fold cross-validation: a bundle per
    fold, their ensemble (give the folder to `run --model`), and out-of-fold predictions; with
    --select auto, first choose the encoder and head by nested cross-validation."""

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
    from rich.text import Text

    from slidemill.workers.training import (
        EpochReport,
        Fit,
        LabelMatch,
        SelectionConfig,
        TrainConfig,
        select_and_train,
        train_from_features,
    )

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)  # typer carries its own click: by name
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    if select is None:
        if len(features) != 1:
            fail(f"{len(features)} --features folders: give one, or add --select auto to choose")
        for name in ("heads", "inner_folds"):
            if given(name):
                fail(f"--{name.replace('_', '-')} is for --select auto")
    else:
        if given("head"):
            fail("--head trains one head; with --select auto give the candidates with --heads")
        if head_kwargs is not None:
            fail("--select auto trains every head with its defaults; drop --head-kwargs")
    kwargs: dict[str, int | float | str | bool] = {}
    if head_kwargs is not None:
        try:
            parsed = json.loads(head_kwargs)
        except json.JSONDecodeError as err:
            fail(f"--head-kwargs is not JSON: {err}")
        if not isinstance(parsed, dict):
            fail(f"--head-kwargs must be a JSON object, got {head_kwargs!r}")
        kwargs = parsed
    class_names = None
    if classes is not None:
        class_names = class_list(classes)
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

    config = TrainConfig(
        head=head,
        head_kwargs=kwargs,
        n_folds=folds,
        max_epochs=epochs,
        patience=patience,
        min_epochs=min_epochs,
        smoothing=smoothing,
        weight_averaging=weight_averaging,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
    )
    if select is None:
        with progress:
            report = train_from_features(
                labels,
                features[0],
                out,
                config,
                classes=class_names,
                on_labels=show_labels,
                on_epoch=show_epoch,
            )
        _print_training(report)
        return

    settings = SelectionConfig(inner_folds=inner_folds)
    if heads is not None:
        settings = SelectionConfig(heads=class_list(heads), inner_folds=inner_folds)
    selection_bar = progress.add_task("selection", total=None, visible=False)

    def show_fit(f: Fit) -> None:
        where = "CV fold" if f.inner_fold is None else f"inner {f.inner_fold + 1}/{inner_folds}"
        progress.update(
            selection_bar,
            total=f.total,
            completed=f.index,
            visible=True,
            description=f"selection: outer {f.outer_fold + 1}/{folds} {where}  {f.candidate.name}",
        )

    with progress:
        chosen = select_and_train(
            labels,
            features,
            out,
            config,
            settings,
            classes=class_names,
            on_labels=show_labels,
            on_fit=show_fit,
            on_epoch=show_epoch,
        )
        progress.update(selection_bar, completed=progress.tasks[selection_bar].total)
    _print_selection(chosen)
    _print_training(chosen.training)


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _print_selection(report: SelectionReport) -> None:
    """Every candidate's inner-CV (mean over the outer folds) and CV figures, the choice and
    why, and the nested estimate with how often each candidate was picked."""
    s = report.selection
    k = s.outer_folds
    table = Table(
        "encoder",
        "head",
        "params",
        "inner AUROC",
        "inner log-loss",
        "inner Brier",
        "picked",
        "CV AUROC",
        "CV log-loss",
        "CV Brier",
        "seconds",
        title=f"candidates: inner CV ({s.inner_folds} folds, mean over {k} outer folds) and "
        f"CV on all slides ({k} folds)",
    )
    picks = s.picks()
    for i, c in enumerate(s.candidates):
        inner, plain = s.inner_mean(i), s.plain[i]
        mark = "bold green" if i == s.choice.index else None
        table.add_row(
            c.encoder,
            c.head,
            str(c.n_parameters),
            _num(inner.auroc),
            _num(inner.log_loss),
            _num(inner.brier),
            f"{picks[i]}/{k}",
            _num(plain.auroc),
            _num(plain.log_loss),
            _num(plain.brier),
            f"{s.seconds[i]:.0f}",
            style=mark,
        )
    console.print(table)
    console.print(f"chose {s.chosen.name}: {s.choice.reason}", highlight=False, soft_wrap=True)
    picked = ", ".join(f"{c.name} {n}/{k}" for c, n in zip(s.candidates, picks, strict=True) if n)
    console.print(
        f"nested estimate of select-then-train: AUROC {_num(s.nested.auroc)}, log-loss "
        f"{_num(s.nested.log_loss)}, Brier {_num(s.nested.brier)} over {s.nested.n_slides} "
        f"slides ({k} outer folds; picked: {picked})",
        highlight=False,
        soft_wrap=True,
    )


def _print_training(report: TrainingReport) -> None:
    """The held-out folds of a training run, its out-of-fold AUROC, and what it wrote."""
    num = _num
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
    from slidemill.pipeline.evaluation import run_evaluation, synth_truth

    run = run_evaluation(
        out, model=model, labels=labels, results=results or (), truth=synth_truth,
        bootstrap=bootstrap,
    )  # fmt: skip
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
