"""`slidemill demo`, `synth` and `schemas`: the whole workflow, generated slides, the contracts
as JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
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
    from slidemill.pipeline.demo import DemoSettings, default_sample, run_demo

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
    generator: Annotated[
        str | None,
        typer.Option(
            help="drawn, textured, or a lesion family on the texture (default: the sample "
            "slide): crowding, architecture, stroma, necrosis; lesions of 0.2-3% of the "
            "tissue among confounders, each slide with its own stain and scanner."
        ),
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(
            help="A lesion family's slides as the site of this name stains and scans them: its "
            "stain, white balance, blur and JPEG quality shift every slide's (the same name, "
            "the same shift)."
        ),
    ] = None,
) -> None:
    """Generate a labelled benchmark with ground truth: pyramidal SVS slides (JPEG tiles,
    0.5/2/8 µm/px) with planted lesions and look-alikes, `<stem>.mask.png` (lesions at 8 µm/px)
    and `<stem>.truth.json` beside each, and `labels.csv`; with --degrade, degraded copies."""
    import time

    from slidemill.pipeline.demo import default_sample
    from slidemill.pipeline.synth import (
        DEGRADATIONS,
        FAMILIES,
        site_shift,
        write_benchmark_set,
        write_degraded_set,
    )

    for kind in degrade or ():
        if kind not in DEGRADATIONS:
            fail(f"--degrade {kind}: choose from {', '.join(DEGRADATIONS)}")
    if generator is not None and generator not in ("drawn", "textured", *FAMILIES):
        fail(f"--generator {generator}: one of drawn, textured, {', '.join(FAMILIES)}")
    if site is not None and generator not in FAMILIES:
        fail(f"--site {site}: a site shifts a lesion family's slides; give --generator "
             f"{'|'.join(FAMILIES)}")  # fmt: skip
    shift = site_shift(site) if site is not None else None
    if generator == "drawn" and texture is not None:
        fail("--generator drawn takes no --texture")
    if generator not in (None, "drawn") and texture is None:
        texture = default_sample()
        if texture is None:
            fail(f"--generator {generator}: give a real slide with --texture")

    start = time.perf_counter()
    slides = write_benchmark_set(
        out,
        n=n,
        positive_fraction=positive_fraction,
        seed=seed,
        size=parse_size(size, "--size"),
        texture=texture,
        generator=generator if generator in FAMILIES else None,
        site=shift,
    )
    for s in slides:
        console.print(f"{s.path}  {s.label}", highlight=False)
    if shift is not None:
        console.print(f"site {shift.name}: {shift.describe()}", highlight=False)
    if degrade:
        copies = write_degraded_set([s.path for s in slides], out / "degraded", degrade, seed)
        console.print(f"{len(copies)} degraded copies in {out / 'degraded'}", highlight=False)
    positives = sum(s.label == "positive" for s in slides)
    console.print(
        f"{len(slides)} slides ({positives} positive), labels in {out / 'labels.csv'}, "
        f"{time.perf_counter() - start:.1f} s",
        highlight=False,
    )
