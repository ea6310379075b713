"""`slidemill explain` and `bench-explain` as commands: their defaults are the library's, and
what they refuse before any cluster starts (a folder that is no run, a slide it does not hold, a
model other than the run's), each in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from slidemill.cli import EXIT_FAILED, EXIT_USAGE, app
from slidemill.workers.explain import ExplainSettings
from tests.pipeline.export.test_export import write_store

runner = CliRunner(env={"COLUMNS": "200"})


def _defaults(command: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    return {p.name: p.default for p in group.commands[command].params}  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["explain", "bench-explain"])
def test_the_commands_defaults_are_the_settings_defaults(command: str) -> None:
    defaults = _defaults(command)
    settings = ExplainSettings()
    for name in ("budget", "seed", "max_players"):
        assert defaults[name] == getattr(settings, name), name


def test_explain_refuses_what_is_not_a_run_and_slides_it_lacks(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    nothing = runner.invoke(app, ["explain", str(tmp_path), "--model", str(tiny_bundle)])
    assert nothing.exit_code == EXIT_USAGE
    assert "no slide results found" in nothing.output
    write_store(tmp_path / "slide-a", heat_shape=(4, 5))
    missing = runner.invoke(
        app, ["explain", str(tmp_path), "--model", str(tiny_bundle), "--slides", "slide-z"]
    )
    assert missing.exit_code == EXIT_USAGE
    assert "has no slide 'slide-z'" in missing.output and "slide-a" in missing.output
    target = runner.invoke(
        app, ["explain", str(tmp_path), "--model", str(tiny_bundle), "--target", "tumour"]
    )
    assert target.exit_code == EXIT_USAGE and "negative, positive" in target.output


def test_a_slide_made_by_another_model_fails_alone_with_its_reason(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    write_store(tmp_path / "slide-a", heat_shape=(4, 5))  # its provenance names model abab…
    got = runner.invoke(app, ["explain", str(tmp_path), "--model", str(tiny_bundle)])
    assert got.exit_code == EXIT_FAILED
    assert (
        "made by model abababababab" in got.output and "give the model the run used" in got.output
    )
    assert not (tmp_path / "slide-a" / "explain.zarr").exists()


def test_bench_explain_refuses_a_head_the_folder_lacks(tmp_path: Path) -> None:
    for head in ("abmil_gated", "mean_pool"):
        (tmp_path / f"run-{head}").mkdir()
        (tmp_path / f"model-{head}").mkdir()
    args = ["bench-explain", "--demo", str(tmp_path), "--heads", "abmil_gated,topk_linear"]
    got = runner.invoke(app, args)
    assert got.exit_code == EXIT_USAGE
    assert f"--heads topk_linear: {tmp_path / 'run-topk_linear'} is not a folder" in got.output
