"""No option value reaches a user of the CLI as a traceback: values a contract refuses, values
JSON cannot carry and options that do not fit the model are one line and exit 2, and nothing is
written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidemill.cli import EXIT_USAGE, app

runner = CliRunner()


def _one_line_or_usage(output: str) -> list[str]:
    """The error lines: ours is one line; click's own range check (nan is in no range) is its
    usage box, also no traceback."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output
    if lines and lines[0].startswith("Usage:"):
        return lines
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines


SUBMIT_VALUES = [
    ("--mpp", "inf"),
    ("--mpp", "nan"),
    ("--mpp", "-1"),
    ("--worker-timeout", "inf"),
    ("--worker-timeout", "nan"),
    ("--worker-timeout", "1e300"),
    ("--tiles-per-task", "1000000000"),
    ("--overlap", "1000000000"),
    ("--batch-size", "1000000000000"),
]


@pytest.mark.parametrize(("option", "value"), SUBMIT_VALUES)
def test_submit_refuses_a_value_in_one_line_before_calling_the_service(
    option: str, value: str, tmp_path: Path
) -> None:
    # no service listens on the port: a value refused locally never gets that far
    args = ["submit", str(tmp_path / "x.svs"), "--model", str(tmp_path), "--out",
            str(tmp_path / "out"), "--server", "http://127.0.0.1:9", option, value]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    _one_line_or_usage(result.output)


@pytest.mark.parametrize(("option", "value"), [*SUBMIT_VALUES[:6], ("--overlap", "64")])
def test_run_refuses_a_value_in_one_line_and_writes_nothing(
    option: str, value: str, tiny_bundle: Path, slides_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["run", str(slides_dir), "--model", str(tiny_bundle), "--out", str(out),
            "--no-progress", option, value]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE, (result.output, result.exception)
    lines = _one_line_or_usage(result.output)
    if option == "--overlap":  # the tiny model's tiles are 64 px: no stride left
        assert "do not fit the model (64-px tiles" in lines[0]
    assert not out.exists()
