"""`slidemill bench-encoders` runs end to end on one small preset (its rows and table exist; no
timing is asserted), cuts tissue tiles, and refuses an unknown preset in one line."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from typer.testing import CliRunner

from slidemill.bench import EncoderRow, encoder_table, run_bench_encoders, tissue_tiles
from slidemill.cli import EXIT_USAGE, app


def test_one_reduced_preset_gets_its_row_measured_in_a_process_of_its_own(
    sample_slide: Path,
) -> None:
    buf = io.StringIO()
    rows = run_bench_encoders(
        ["phikon"], sample_slide, Console(file=buf, width=250), tiles=2, rounds=1, depth=1
    )
    [row] = rows
    assert row.error is None, row.error
    assert (row.preset, row.tiles, row.rounds, row.depth, row.width) == ("phikon", 2, 1, 1, 768)
    assert row.quantised_layers == 6  # one block's six linear layers
    assert row.fp32_tiles_s > 0 and row.int8_tiles_s > 0 and -1 <= row.cos_min <= 1
    text = buf.getvalue()
    assert "slidemill bench-encoders (" in text and "CMU-1-Small-Region.svs" in text
    assert "│ phikon" in text and "1 blocks only" in text
    for header in ("fp32 tiles/s", "int8 tiles/s", "int8/fp32", "cos min", "peak MiB int8"):
        assert header in text
    if not torch.cuda.is_available():
        assert "no GPU" in text


def test_a_failed_preset_is_a_row_with_its_reason() -> None:
    rows = [
        EncoderRow("uni2-h", 681_394_176, 1536, 4, 3, error="its process was killed (signal 9)"),
    ]
    buf = io.StringIO()
    table = encoder_table(
        rows, "slidemill bench-encoders", Path("s.svs"), datetime.date(2026, 1, 2)
    )
    Console(file=buf, width=250).print(table)
    text = buf.getvalue()
    assert "slidemill bench-encoders (2026-01-02)" in text
    assert "uni2-h" in text and "its process was killed (signal 9)" in text


def test_tissue_tiles_are_tissue_at_the_asked_size(sample_slide: Path) -> None:
    tiles = tissue_tiles(sample_slide, 3, 224, 0.5)
    assert tiles.shape == (3, 224, 224, 3) and tiles.dtype == np.uint8
    assert (tiles.reshape(3, -1).mean(1) < 220).all()  # not white glass
    assert len({t.tobytes() for t in tiles}) == 3  # three places


def test_an_unknown_preset_is_a_usage_error_naming_the_option() -> None:
    result = CliRunner().invoke(app, ["bench-encoders", "--presets", "phikon,nope"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "--presets" in result.output and "phikon" in result.output
    assert "Traceback" not in result.output
