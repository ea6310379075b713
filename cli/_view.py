"""`slidemill view`: the web viewer over run folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from slidemill.cli._errors import console, fail
from slidemill.cli._options import parse_size


def view(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (the --out of `slidemill run`).")],
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs a token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8001,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the viewer's token (else $SLIDEMILL_TOKEN).")
    ] = None,
    cache_mb: Annotated[int, typer.Option(min=1, help="Encoded tiles kept in memory (MiB).")] = 256,
) -> None:
    """Serve run folders in the browser: a table of the slides, and each slide zoomable with its
    heatmap over it, the tile under the pointer and the top-k tiles."""
    from slidemill.viewer import ViewerConfigError, ViewerOptions, checked_token, is_loopback
    from slidemill.viewer import view as serve_viewer

    # a variable set but empty is a mistake to report, never "no token" (nor "auth off")
    token = os.environ.get("SLIDEMILL_TOKEN")
    source = "SLIDEMILL_TOKEN"
    if token_file is not None:
        try:
            lines = token_file.read_text().strip().splitlines()
        except OSError as err:
            fail(f"{token_file}: cannot read the token file ({err.strerror})")
        token, source = (lines[0] if lines else ""), str(token_file)  # its first line, as serve's
    if token is not None:
        checked_token(token, source, ViewerConfigError)
    where = f"http://{host}:{port}/" + ("?token=…" if token else "")
    console.print(f"slidemill viewer on {where} (Ctrl-C stops it)", highlight=False)
    if not is_loopback(host):  # browsers keep a Secure cookie only from an https page
        console.print("beyond loopback its session cookie is Secure: serve it behind HTTPS")
    serve_viewer(runs, host, port, ViewerOptions(token=token, cache_bytes=cache_mb << 20))


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
    import datetime

    from rich.console import Console
    from rich.table import Table

    from slidemill.pipeline.bench import default_sample, write_large_slide
    from slidemill.viewer import Latencies, viewer_benchmark

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
