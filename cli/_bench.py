"""`slidemill bench`, `bench-gpu`, `bench-encoders`, `bench-learning`, `bench-families`,
`bench-service`, `bench-viewer`: the benchmarks and the learning studies, whose room
(`slidemill.bench`) only this module imports."""

from __future__ import annotations

import datetime
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from slidemill.cli._errors import EXIT_FAILED, console, fail
from slidemill.cli._options import parse_size


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
    from slidemill.bench import run_bench, run_many_bench
    from slidemill.pipeline.demo import default_sample

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

    from slidemill.bench import (
        build_wheelhouse,
        read_names,
        run_bench_gpu,
        write_large_slide,
    )
    from slidemill.pipeline.demo import default_sample

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


def bench_encoders(
    presets: Annotated[
        str | None,
        typer.Option(help="Comma-separated presets to measure (default: all, smallest first)."),
    ] = None,
    slide: Annotated[
        Path | None, typer.Option(help="Slide the tissue tiles are cut from (default: the sample).")
    ] = None,
    tiles: Annotated[int, typer.Option(min=1, help="Tiles per timed batch.")] = 16,
    large_tiles: Annotated[
        int, typer.Option(min=1, help="Tiles per timed batch of the ViT-H and ViT-g presets.")
    ] = 4,
    rounds: Annotated[
        int, typer.Option(min=1, help="Timed rounds of float32 and int8 each (alternating).")
    ] = 3,
) -> None:
    """Encoder presets at full size with random weights on this machine: tiles/s in float32
    and with --quantize int8's linear layers, peak memory of each (a process per preset), the
    cosine similarity of int8 features to float32's on tissue tiles; bf16 on a GPU."""
    import shlex
    import sys

    from slidemill.bench import default_order, run_bench_encoders
    from slidemill.pipeline.demo import default_sample

    path = slide or default_sample()
    if path is None:
        fail("no sample slide found; give one with --slide or set SLIDEMILL_SAMPLE_SLIDE")
    everything = default_order()
    chosen = tuple(p.strip() for p in presets.split(",") if p.strip()) if presets else everything
    unknown = [p for p in chosen if p not in everything]
    if unknown or not chosen:
        fail(f"--presets {presets!r}: give some of {', '.join(everything)}")
    command = "slidemill " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_bench_encoders(
        chosen,
        path,
        Console(width=max(Console().width, 200)),
        tiles=tiles,
        large_tiles=large_tiles,
        rounds=rounds,
        command=command.strip(),
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
    from slidemill.bench import (
        GENERATORS,
        STRATEGIES,
        LearningSettings,
        run_learning_study,
        study_table,
    )
    from slidemill.pipeline.demo import default_sample

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


def bench_families(
    out: Annotated[
        Path, typer.Option(help="Folder for every family's slides, features and figures.")
    ] = Path(".bench-learning-families"),
    texture: Annotated[
        Path | None,
        typer.Option(help="Real slide whose texture the families use (default: sample)."),
    ] = None,
    families: Annotated[
        str, typer.Option(help="Comma-separated lesion families, each held out in turn.")
    ] = "crowding,architecture,stroma,necrosis",
    n_train: Annotated[int, typer.Option(min=8, help="Training slides per family.")] = 32,
    n_test: Annotated[int, typer.Option(min=4, help="Test slides per family.")] = 16,
    cohorts: Annotated[str, typer.Option(help="Comma-separated training cohort sizes.")] = "16,32",
    size: Annotated[str, typer.Option(help="Level-0 size WIDTHxHEIGHT of each slide.")] = (
        "4096x4096"
    ),
    seed: Annotated[int, typer.Option(min=0)] = 0,
    encoders: Annotated[
        str, typer.Option(help="Comma-separated weight-free encoders (candidates).")
    ] = "handcrafted",
    tilings: Annotated[
        str, typer.Option(help="Comma-separated tilings PX@MPP (candidates).")
    ] = "112@0.5,112@1",
    heads: Annotated[str, typer.Option(help="Comma-separated MIL heads (candidates).")] = (
        "topk_linear,abmil_gated,mean_pool"
    ),
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            help="A training strategy among the candidates (repeat for more; default: the "
            "fixed schedule with weight averaging, and early stopping)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes for slides and training.")] = 2,
) -> None:
    """Leave-one-family-out: for each lesion family, the encoder, tiling, head and training
    strategy are chosen by cross-validation on the other families only, then trained on the
    family's cohorts and scored on its unseen test slides (slide and localisation AUROC);
    writes OUT/family-study.json."""
    from slidemill.bench import (
        FAMILY_STRATEGIES,
        STRATEGIES,
        FamilySettings,
        family_table,
        run_family_study,
    )
    from slidemill.pipeline.demo import default_sample
    from slidemill.pipeline.synth import FAMILIES

    source = texture or default_sample()
    if source is None:
        fail("no sample slide found; give one with --texture or set SLIDEMILL_SAMPLE_SLIDE")
    chosen = tuple(f.strip() for f in families.split(",") if f.strip())
    if len(chosen) < 2 or any(f not in FAMILIES for f in chosen):
        fail(f"--families {families!r}: give two or more of {', '.join(FAMILIES)}")
    try:
        sizes = tuple(int(c) for c in cohorts.split(","))
        tiles = tuple(
            (int(t.split("@")[0]), float(t.split("@")[1])) for t in tilings.split(",") if t
        )
    except (ValueError, IndexError):
        fail(f"--cohorts {cohorts!r} / --tilings {tilings!r}: give e.g. 16,32 and 112@0.5,112@1")
    for name in strategy or ():
        if name not in STRATEGIES:
            fail(f"--strategy {name!r}: one of " + "; ".join(repr(k) for k in STRATEGIES))

    def names(text: str) -> tuple[str, ...]:
        return tuple(e.strip() for e in text.split(",") if e.strip())

    if not names(encoders) or not names(heads) or not tiles:
        fail("--encoders, --heads and --tilings each need at least one value")
    settings = FamilySettings(
        families=chosen,
        n_train=n_train,
        n_test=n_test,
        cohorts=sizes,
        size=parse_size(size, "--size"),
        seed=seed,
        encoders=names(encoders),
        tilings=tiles,
        heads=names(heads),
        strategies=tuple(strategy) if strategy else FAMILY_STRATEGIES,
        workers=workers,
    )
    rows = run_family_study(out, source, settings, console)
    console.print(family_table(rows), soft_wrap=True, highlight=False, markup=False)


def bench_federated(
    out: Annotated[
        Path, typer.Option(help="Folder for the sites' slides, features, models and figures.")
    ] = Path(".bench-federated"),
    texture: Annotated[
        Path | None,
        typer.Option(help="Real slide whose texture the slides use (default: sample)."),
    ] = None,
    sites: Annotated[
        str,
        typer.Option(
            help="Comma-separated sites NAME:NEGATIVES:POSITIVES (training slides); each name "
            "is its own stain and scanner (`synth --site`)."
        ),
    ] = "north:12:12,south:8:8,east:10:2",
    held_out: Annotated[
        int, typer.Option(min=2, help="Held-out slides per site (half positive).")
    ] = 16,
    family: Annotated[str, typer.Option(help="Lesion family of the slides.")] = "crowding",
    size: Annotated[str, typer.Option(help="Level-0 size WIDTHxHEIGHT of each slide.")] = (
        "3072x3072"
    ),
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 20,
    local_epochs: Annotated[int, typer.Option(min=1, help="Epochs per site per round.")] = 2,
    dp_noise: Annotated[
        str, typer.Option(help="Comma-separated noise multipliers, a DP run each.")
    ] = "0.3,1.0",
    dp_clip: Annotated[float, typer.Option(help="Clipping norm of the DP runs.")] = 0.5,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Processes that write slides.")] = 2,
) -> None:
    """Sites whose stain and scanner differ, one with very few positives: each site alone and
    pooled (`train`) against federated training on Flower (FedAvg, FedProx, FedAvg with DP),
    every model scored on one common held-out set; writes OUT/federated-bench.json."""
    from slidemill.bench import (
        BenchSite,
        FederatedBenchSettings,
        federated_table,
        run_federated_bench,
    )
    from slidemill.pipeline.demo import default_sample

    _require_federated()
    source = texture or default_sample()
    if source is None:
        fail("no sample slide found; give one with --texture or set SLIDEMILL_SAMPLE_SLIDE")
    try:
        chosen = tuple(
            BenchSite(n, int(neg), int(pos))
            for n, neg, pos in (t.strip().split(":") for t in sites.split(",") if t.strip())
        )
        settings = FederatedBenchSettings(
            sites=chosen,
            held_out=held_out,
            family=family,
            size=parse_size(size, "--size"),
            rounds=rounds,
            local_epochs=local_epochs,
            dp_noise=tuple(float(z) for z in dp_noise.split(",") if z.strip()),
            dp_clip=dp_clip,
            seed=seed,
            workers=workers,
        )
    except ValueError as e:
        fail(f"--sites {sites!r} / --dp-noise / --family: {e} (sites as north:12:12,south:8:8)")
    try:
        rows = run_federated_bench(out, source, settings, console)
    except ValueError as e:
        fail(str(e))
    console.print(
        f"slidemill bench-federated, {datetime.date.today()}",
        highlight=False,
    )
    console.print(federated_table(rows), soft_wrap=True, highlight=False, markup=False)


def _require_federated() -> None:
    from slidemill.cluster import require_extra

    require_extra("flwr", "federated", needed_by="slidemill bench-federated")


def bench_service(
    work: Annotated[
        Path, typer.Option(help="Scratch folder (generated slides, outputs, the ledger).")
    ] = Path(".slidemill-bench/service"),
    batches: Annotated[int, typer.Option(min=1, help="Batches submitted at once.")] = 20,
    slides: Annotated[int, typer.Option(min=1, help="Slides per batch.")] = 10,
) -> None:
    """The lab service under load: batches of generated slides submitted at once to a real
    service on loopback; the API's latency while busy, and whether the ledger is exact."""
    from slidemill.bench import load_benchmark

    report = load_benchmark(work.absolute(), batches=batches, slides_per_batch=slides)

    def ms(values: tuple[float, ...]) -> str:
        return f"{report.p(values, 0.5):.1f} / {report.p(values, 0.95):.1f} / {max(values):.1f} ms"

    rate = report.slides / report.seconds
    table = Table("figure", "value", title=f"slidemill bench-service, {datetime.date.today()}")
    table.add_row("batches × slides", f"{report.batches} × {report.slides // report.batches}")
    table.add_row("all done, ledger = results.csv", "yes" if report.exact else "NO")
    table.add_row("wall time", f"{report.seconds:.1f} s ({rate:.2f} slides/s)")
    table.add_row("submit p50 / p95 / max", ms(report.submit_ms))
    table.add_row(f"GET while busy p50 / p95 / max ({len(report.read_ms)})", ms(report.read_ms))
    console.print(table)
    if not report.exact:
        raise typer.Exit(EXIT_FAILED)


def bench_viewer(
    slide: Annotated[
        Path | None, typer.Option(help="A real slide to pan (default: the sample).")
    ] = None,
    work: Annotated[
        Path,
        typer.Option(help="Folder for the generated large slide, the runs (kept) and scratch."),
    ] = Path(".slidemill-bench"),
    large: Annotated[
        str, typer.Option(help="Size WxH of the generated large slide; 'none' to skip it.")
    ] = "50000x20000",
    views: Annotated[int, typer.Option(min=1, help="Views along each slide's pan path.")] = 30,
) -> None:
    """Benchmark the viewer: tile latency p50/p95, uncached and cached, while a client pans the
    sample slide and a gigapixel one at full resolution; the viewer's memory meanwhile."""
    from slidemill.bench import Latencies, viewer_benchmark, write_large_slide
    from slidemill.pipeline.demo import default_sample

    path = slide or default_sample()
    if path is None:
        fail("no sample slide found; give one with --slide or set SLIDEMILL_SAMPLE_SLIDE")
    slides = [path]
    work.mkdir(parents=True, exist_ok=True)
    if large.lower() != "none":
        w, h = parse_size(large, "--large")
        big = work / f"large-{w}x{h}.tiff"
        if not big.exists():
            console.print(f"generating {big} ({w * h / 1e9:.2f} gigapixel, once)…")
        slides.append(write_large_slide(big, w, h))
    reports = viewer_benchmark(slides, work.absolute(), views, console.print)
    table = Table(
        "slide", "Gpx", "views", "tiles", "slide tile p50/p95 ms", "heatmap tile p50/p95 ms",
        "viewer RSS MiB",
        title=f"slidemill bench-viewer, {datetime.date.today()} (uncached → cached)",
    )  # fmt: skip

    def pair(values: tuple[float, ...]) -> str:
        return f"{Latencies.p(values, 0.5):.1f} / {Latencies.p(values, 0.95):.1f}"

    for r in reports:
        table.add_row(
            r.slide_id,
            f"{r.gigapixels:.2f}",
            str(r.views),
            str(len(r.slide_tiles.uncached) + len(r.heatmap_tiles.uncached)),
            f"{pair(r.slide_tiles.uncached)} → {pair(r.slide_tiles.cached)}",
            f"{pair(r.heatmap_tiles.uncached)} → {pair(r.heatmap_tiles.cached)}",
            f"{r.rss_start_mib:.0f} → peak {r.rss_peak_mib:.0f}",
        )
    Console(width=max(Console().width, 130)).print(table)


def bench_explain(
    demo: Annotated[
        Path | None,
        typer.Option(help="A finished demo's folder (default: demo-out, else /tmp/demo9)."),
    ] = None,
    budget: Annotated[int, typer.Option(min=1, help="Orders of each slide's regions.")] = 64,
    max_players: Annotated[int, typer.Option(min=1, help="Regions per slide at most.")] = 64,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the orders.")] = 0,
    out: Annotated[Path, typer.Option(help="Where the figures are written as JSON.")] = Path(
        ".slidemill-bench/explain.json"
    ),
    end_to_end: Annotated[
        bool, typer.Option(help="Also time `slidemill explain` itself on a copy of each run.")
    ] = True,
    heads: Annotated[
        str,
        typer.Option(
            help="Comma-separated heads: the folder's run-<head>/ and model-<head>/ of each."
        ),
    ] = "abmil_gated,mean_pool",
) -> None:
    """Explanations of the demo's models measured: deletion and insertion AUC of attention, tile
    scores and Shapley values on the held-out positive slides (random and truth orders beside
    them), their lesion localisation AUROC against the generated slides' truth, and seconds per
    slide, also on bags 4, 16 and 64 times larger."""
    from slidemill.bench import find_demo, run_bench_explain

    folder = demo or find_demo()
    if folder is None:
        fail("no finished demo found in demo-out or /tmp/demo9; run `make demo` or give --demo")
    names = tuple(h.strip() for h in heads.split(",") if h.strip())
    for head in names:
        for part in (f"run-{head}", f"model-{head}"):
            if not (folder / part).is_dir():
                fail(f"--heads {head}: {folder / part} is not a folder")
    console.print(
        f"slidemill bench-explain, {datetime.date.today()}, demo {folder}", highlight=False
    )
    run_bench_explain(
        folder,
        Console(width=max(Console().width, 200)),
        budget=budget,
        max_players=max_players,
        seed=seed,
        out=out,
        whole_command=end_to_end,
        heads=names,
    )
