"""`slidemill bench --many N`: N links to one slide as one batch (no timing assertions)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from slidemill.bench import link_slides, run_many_bench


def test_links_name_the_slide_n_times(sample_slide: Path, tmp_path: Path) -> None:
    folder = link_slides(sample_slide, 3, tmp_path / "many")
    links = sorted(folder.iterdir())
    assert [p.name for p in links] == [f"slide-{k:05d}.svs" for k in range(3)]
    assert all(p.resolve() == sample_slide.resolve() for p in links)
    assert len(list(link_slides(sample_slide, 1, folder).iterdir())) == 1  # made afresh


def test_many_slides_cost_the_scheduler_five_tasks_each(sample_slide: Path, tmp_path: Path) -> None:
    buf = io.StringIO()
    run_many_bench(sample_slide, (2,), Console(file=buf, width=200), tmp_path)
    row = next(line for line in buf.getvalue().splitlines() if line.strip("│ ").startswith("2 "))
    cells = [c.strip() for c in row.strip("│").split("│")]
    # plan, tile, encode, MIL, reduce: nothing else of a slide goes through the scheduler (the
    # heatmap's OME-Zarr once sent its own dask tasks there, queued behind the whole batch)
    assert cells[0] == "2" and cells[6] == "5.0", row
