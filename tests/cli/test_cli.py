"""The thin CLI: commands that need no cluster, and usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.workers import load_bundle

runner = CliRunner()


def test_schemas_command_writes_json_schema(tmp_path: Path) -> None:
    res = runner.invoke(app, ["schemas", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    schema = json.loads((tmp_path / "slide_result.schema.json").read_text())
    assert "status" in schema["properties"]


def test_model_init_writes_a_loadable_bundle(tmp_path: Path) -> None:
    out = tmp_path / "m"
    res = runner.invoke(
        app,
        ["model", "init", "--out", str(out), "--encoder", "tiny_cnn", "--classes", "a,b,c"],
    )
    assert res.exit_code == 0, res.output
    model = load_bundle(out)
    assert model.manifest.class_names == ("a", "b", "c")
    assert model.manifest.feature_dim == 32


def test_unknown_encoder_is_a_usage_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["model", "init", "--out", str(tmp_path / "m"), "--encoder", "nope"])
    assert res.exit_code == 2
    assert "unknown encoder 'nope'" in res.output


def test_run_without_a_bundle_is_a_usage_error(tmp_path: Path) -> None:
    slide = tmp_path / "x.svs"
    slide.write_bytes(b"")
    res = runner.invoke(app, ["run", str(slide), "--model", str(tmp_path), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a model bundle" in res.output


def test_synth_writes_slides_with_ground_truth(tmp_path: Path) -> None:
    res = runner.invoke(app, ["synth", "--out", str(tmp_path), "--n", "1", "--size", "1024x1024"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.csv",
        "synthetic-000.mask.png",
        "synthetic-000.svs",
        "synthetic-000.truth.json",
    ]


@pytest.mark.parametrize("text", ["6000", "axb", "6000x4000x3", "-5x3", "0x10"])
def test_sizes_are_width_x_height(tmp_path: Path, text: str) -> None:
    res = runner.invoke(app, ["synth", "--out", str(tmp_path), "--n", "1", "--size", text])
    assert res.exit_code == 2 and "is not WIDTHxHEIGHT" in res.output
    assert not any(tmp_path.iterdir())


def test_a_bad_size_is_a_usage_error_naming_the_option(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "--slide", str(tmp_path / "x.svs"), "--large", "huge"])
    assert res.exit_code == 2 and "--large 'huge'" in res.output


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        # `slidemill --help` and parsing wait for nothing heavy: the rooms load when a command
        # calls into them or reports an error
        ("slidemill.cli", ("torch", "fastapi", "distributed", "slidemill.pipeline.graph",
                           "slidemill.workers", "slidemill.service")),
        # the viewer serves slides through the readers, and neither needs PyTorch
        ("slidemill.viewer", ("torch", "slidemill.workers", "slidemill.pipeline.graph")),
        ("slidemill.pipeline.slides", ("torch", "slidemill.workers")),
    ],
)  # fmt: skip
def test_light_entry_points_do_not_load_heavy_rooms(module: str, absent: tuple[str, ...]) -> None:
    code = f"import sys, {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == "[]"


def test_model_pretrain_refuses_a_joined_encoder_naming_the_fix(tmp_path: Path) -> None:
    out = tmp_path / "enc"
    res = runner.invoke(
        app,
        ["model", "pretrain", str(tmp_path), "--out", str(out), "--encoder",
         "histo_cnn+handcrafted"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0, res.output
    line = res.output
    assert "--encoder histo_cnn" in line and "features" in line
    assert "--encoder-weights" in line and "encoder.safetensors" in line
    assert not out.exists()
