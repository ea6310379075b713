"""`slidemill demo`, `synth`, `bench` and `schemas`: the whole workflow, generated slides,
throughput, the contracts as JSON Schema."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from slidemill.cli._errors import console, fail
from slidemill.cli._options import parse_size
from slidemill.schemas.layout import RESULTS_CSV


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

    settings = DemoSettings(
        n_train=n_train, n_test=n_test, pretrain_steps=pretrain_steps, seed=seed
    )
    result = run_demo(out, sample or default_sample(), settings, console)
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
    runs = " ".join(str(p) for p in sorted(out.glob("run-*")) if (p / RESULTS_CSV).is_file())
    console.print(
        f"[bold]view the heatmaps:[/bold] slidemill view {runs}  (then open http://127.0.0.1:8001/)",
        soft_wrap=True,
        highlight=False,
    )


def schemas(out: Annotated[Path, typer.Option(help="Folder for the JSON Schema files.")]) -> None:
    """Export slidemill's contracts as JSON Schema."""
    from slidemill.schemas import write_json_schemas

    for path in write_json_schemas(out):
        console.print(str(path))


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
    texture: Annotated[
        Path | None,
        typer.Option(
            help="A real slide whose tissue texture fills the tissue (its pyramid only): the "
            "harder benchmark, lesions of 0.1-2% of the tissue and look-alikes of their colour."
        ),
    ] = None,
    degrade: Annotated[
        list[str] | None,
        typer.Option(
            help="Also write degraded copies into OUT/degraded (repeatable): blur, blur_part, "
            "pen, fluorescence; ground truth for slide QC in degradations.csv."
        ),
    ] = None,
) -> None:
    """Generate a labelled benchmark with ground truth: pyramidal SVS slides (JPEG tiles,
    0.5/2/8 µm/px) with planted lesions and look-alikes, `<stem>.mask.png` (lesions at 8 µm/px)
    and `<stem>.truth.json` beside each, and `labels.csv`; with --degrade, degraded copies."""
    import time

    from slidemill.pipeline.synth import DEGRADATIONS, write_benchmark_set, write_degraded_set

    for kind in degrade or ():
        if kind not in DEGRADATIONS:
            fail(f"--degrade {kind}: choose from {', '.join(DEGRADATIONS)}")

    start = time.perf_counter()
    slides = write_benchmark_set(
        out,
        n=n,
        positive_fraction=positive_fraction,
        seed=seed,
        size=parse_size(size, "--size"),
        texture=texture,
    )
    for s in slides:
        console.print(f"{s.path}  {s.label}", highlight=False)
    if degrade:
        copies = write_degraded_set([s.path for s in slides], out / "degraded", degrade, seed)
        console.print(f"{len(copies)} degraded copies in {out / 'degraded'}", highlight=False)
    positives = sum(s.label == "positive" for s in slides)
    console.print(
        f"{len(slides)} slides ({positives} positive), labels in {out / 'labels.csv'}, "
        f"{time.perf_counter() - start:.1f} s",
        highlight=False,
    )


def bench_learning(
    out: Annotated[
        Path, typer.Option(help="Folder for both generators' slides, encoders and features.")
    ] = Path(".bench-learning"),
    texture: Annotated[
        Path | None, typer.Option(help="Real slide for the textured generator (default: sample).")
    ] = None,
    n: Annotated[int, typer.Option(min=8, help="Slides per generator (half positive).")] = 32,
    cohorts: Annotated[str, typer.Option(help="Comma-separated cohort sizes.")] = "16,32",
    size: Annotated[str, typer.Option(help="Level-0 size WIDTHxHEIGHT of each slide.")] = (
        "4000x3000"
    ),
    pretrain_steps: Annotated[int, typer.Option(min=1, help="Encoder pretraining steps.")] = 80,
    heads: Annotated[str, typer.Option(help="Comma-separated MIL heads.")] = (
        "abmil_gated,mean_pool,topk_linear"
    ),
    seed: Annotated[int, typer.Option(min=0)] = 0,
    encoders: Annotated[
        str,
        typer.Option(
            help="Comma-separated encoders whose features are studied (histo_cnn, handcrafted, "
            "histo_cnn+handcrafted, …); a histo_cnn part is pretrained on each generator."
        ),
    ] = "histo_cnn",
    tile_px: Annotated[int, typer.Option(min=16, help="Tile edge in pixels.")] = 112,
    tile_mpp: Annotated[
        float, typer.Option(min=0.01, help="µm/px of the tiles (the slides are 0.5).")
    ] = 1.0,
    generators: Annotated[
        str, typer.Option(help="Comma-separated generators to study (drawn, textured).")
    ] = "drawn,textured",
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            help="A strategy to train every head with (repeat for more; default: all of them "
            "on the first head, two on the others)."
        ),
    ] = None,
) -> None:
    """Which training settings hold on small cohorts: cross-validation of each strategy on
    cohorts of the drawn and the textured benchmark (never the demo's held-out slides), with
    lesion localisation of attention and tile scores; writes OUT/learning-study.json."""
    from slidemill.pipeline.bench import (
        GENERATORS,
        STRATEGIES,
        LearningSettings,
        default_sample,
        run_learning_study,
        study_table,
    )

    source = texture or default_sample()
    if source is None:
        fail("no sample slide found; give one with --texture or set SLIDEMILL_SAMPLE_SLIDE")
    try:
        sizes = tuple(int(c) for c in cohorts.split(","))
    except ValueError:
        fail(f"--cohorts {cohorts!r}: give sizes like 16,32")
    names = tuple(e.strip() for e in encoders.split(",") if e.strip())
    if not names:
        fail("--encoders: give at least one encoder, e.g. histo_cnn,handcrafted")
    chosen = tuple(g.strip() for g in generators.split(",") if g.strip())
    if not chosen or any(g not in GENERATORS for g in chosen):
        fail(f"--generators {generators!r}: give some of {', '.join(GENERATORS)}")
    for name in strategy or ():
        if name not in STRATEGIES:
            fail(f"--strategy {name!r}: one of " + "; ".join(repr(k) for k in STRATEGIES))
    settings = LearningSettings(
        n_slides=n,
        cohorts=sizes,
        size=parse_size(size, "--size"),
        pretrain_steps=pretrain_steps,
        heads=tuple(h.strip() for h in heads.split(",") if h.strip()),
        seed=seed,
        encoders=names,
        tile_px=tile_px,
        tile_mpp=tile_mpp,
        generators=chosen,
    )
    if strategy:
        settings = replace(
            settings, strategies=tuple(strategy), baseline_strategies=tuple(strategy)
        )
    rows = run_learning_study(out, source, settings, console)
    console.print(study_table(rows), soft_wrap=True, highlight=False, markup=False)


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
    many: Annotated[
        list[int] | None,
        typer.Option(
            min=1,
            help="Instead: N links to the slide through the whole pipeline as one batch "
            "(repeatable): seconds and tasks per slide, client memory, first result.",
        ),
    ] = None,
) -> None:
    """Benchmark: tiling against the JPEG decode limit and a naive OpenSlide loop, whole runs on
    1 and 2 workers, and peak worker memory, on the sample slide and a gigapixel one; with
    --many, the per-slide overhead of a batch of many slides."""
    from slidemill.pipeline.bench import default_sample, run_bench, run_many_bench

    path = slide or default_sample()
    if path is None:
        fail("no sample slide found; give one with --slide or set SLIDEMILL_SAMPLE_SLIDE")
    if many:
        run_many_bench(path, tuple(many), Console(width=max(Console().width, 120)), work)
        return
    size = None if large.lower() == "none" else parse_size(large, "--large")
    out = Console(width=max(Console().width, 120))
    run_bench(path, seconds, out, workdir=work, large_size=size, pipeline=pipeline)


def bench_gpu(
    slide: Annotated[
        Path | None, typer.Option(help="The sample slide (default: the sample).")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Time budget per single figure.")] = 5.0,
    work: Annotated[
        Path, typer.Option(help="Folder for the generated large slide (kept) and scratch.")
    ] = Path(".slidemill-bench"),
    large: Annotated[
        str,
        typer.Option(
            help="Size WxH of the generated slide the pipeline runs on; 'none' runs it on the "
            "sample; 'auto': 40000x20000 with a GPU, none without."
        ),
    ] = "auto",
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Tiles per forward pass (default 256 GPU, 16 CPU).")
    ] = None,
    wheelhouse: Annotated[
        Path | None,
        typer.Option(
            help="Instead of measuring: write into this folder the wheels a GPU image with only "
            "torch lacks (slidemill's own too), for --python, and stop."
        ),
    ] = None,
    python: Annotated[str, typer.Option(help="The GPU image's Python, for --wheelhouse.")] = "3.12",
    image_has: Annotated[
        Path | None,
        typer.Option(help="The GPU image's `pip freeze`: what it has is left out of --wheelhouse."),
    ] = None,
) -> None:
    """GPU benchmark: the encoders alone on pre-decoded tensors against the whole pipeline on a
    LocalCUDACluster, nvJPEG against host JPEG decode, GPU utilisation sampled; on a machine
    without a GPU, the same on the CPU. With --wheelhouse, prepares the GPU machine instead."""
    import torch

    from slidemill.pipeline.bench import (
        build_wheelhouse,
        default_sample,
        read_names,
        run_bench_gpu,
        write_large_slide,
    )

    if wheelhouse is not None:
        names = read_names(image_has) if image_has is not None else []
        wheels = build_wheelhouse(wheelhouse, python, names)
        size = sum(w.stat().st_size for w in wheels) / 2**20
        console.print(f"{len(wheels)} wheels, {size:.0f} MiB, in {wheelhouse}", highlight=False)
        return

    path = slide or default_sample()
    if path is None:
        fail("no sample slide found; give one with --slide or set SLIDEMILL_SAMPLE_SLIDE")
    if large.lower() == "auto":
        large = "40000x20000" if torch.cuda.is_available() else "none"
    big = None
    if large.lower() != "none":
        w, h = parse_size(large, "--large")
        work.mkdir(parents=True, exist_ok=True)
        big = write_large_slide(work / f"large-{w}x{h}.tiff", w, h)
    out = Console(width=max(Console().width, 140))
    run_bench_gpu(path, big, seconds, out, workdir=work / "gpu", batch_size=batch_size)
