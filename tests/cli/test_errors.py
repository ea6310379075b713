"""Errors to exit codes, in one place: slidemill's own errors are one line and a status; a bug
keeps its traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slidemill.cli import EXIT_FAILED, EXIT_USAGE, app, exit_code, exit_codes
from slidemill.cluster import ClusterConfigError, ClusterError
from slidemill.pipeline.errors import NoTissueError, PipelineError
from slidemill.schemas import InvalidInputError, SlidemillError
from slidemill.workers import LabelError, ModelBundleError

runner = CliRunner()


def test_no_entry_is_shadowed_by_an_earlier_base() -> None:
    for i, (cls, _) in enumerate(exit_codes()):
        for earlier, _ in exit_codes()[:i]:
            assert not issubclass(cls, earlier), f"{cls.__name__} is caught as {earlier.__name__}"
    assert exit_codes()[-1][0] is SlidemillError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInputError("x"), EXIT_USAGE),
        (ClusterConfigError("x"), EXIT_USAGE),
        (ModelBundleError("x"), EXIT_USAGE),
        (LabelError("x"), EXIT_USAGE),
        (ClusterError("x"), EXIT_FAILED),
        (NoTissueError("x"), EXIT_FAILED),
        (PipelineError("x"), EXIT_FAILED),
    ],
)
def test_each_family_has_its_status(error: SlidemillError, code: int) -> None:
    assert exit_code(error) == code


def _raise(error: BaseException) -> None:
    raise error


def test_our_error_is_one_line_and_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "slidemill.schemas.write_json_schemas",
        lambda out: _raise(ModelBundleError(f"{out}: broken\nsecond line")),
    )
    res = runner.invoke(app, ["schemas", "--out", str(tmp_path)])
    assert res.exit_code == EXIT_USAGE
    assert f"error: {tmp_path}: broken" in res.output and "second line" not in res.output


def test_a_bug_is_not_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "slidemill.schemas.write_json_schemas", lambda out: _raise(KeyError("slide_id"))
    )
    res = runner.invoke(app, ["schemas", "--out", str(tmp_path)])
    assert res.exit_code != EXIT_USAGE
    assert isinstance(res.exception, KeyError)  # propagated with its traceback
    assert "error:" not in res.output


@pytest.mark.parametrize(
    ("missing", "args", "extra"),
    [
        ("fastapi", ["view", "{tmp}"], "viewer"),
        ("sqlalchemy", ["serve", "--allow-root", "{tmp}"], "service"),
        ("httpx", ["status", "--server", "http://127.0.0.1:9"], "service"),
    ],
)
def test_a_command_whose_extra_is_not_installed_names_it(
    missing: str, args: list[str], extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lab that installed the core alone is told which extra a command needs, in one line."""
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail
    res = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == EXIT_USAGE, res.output
    assert f"needs {missing}, which is not installed: pip install 'slidemill[{extra}]'" in (
        " ".join(res.output.split())
    )


def test_an_encoder_whose_extra_is_not_installed_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from slidemill.cluster import MissingExtraError
    from slidemill.workers import ENCODERS

    monkeypatch.setitem(sys.modules, "torchvision", None)
    needs = r"the resnet18 encoder needs torchvision.*slidemill\[encoders\]"
    with pytest.raises(MissingExtraError, match=needs):
        ENCODERS.build("resnet18")
