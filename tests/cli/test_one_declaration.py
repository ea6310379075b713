"""One declaration (issue 24): the run's options are `RunOptions`' fields, and every surface that
takes them (`run`, `features`, `submit`, the service's `BatchRequest`, `RunSpec`) takes the same
set, with the same defaults, limits and help, and refuses what the contract refuses."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import typer.main
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from slidemill.cli import EXIT_USAGE, app
from slidemill.schemas import RunOptions, RunSpec
from slidemill.service import BatchRequest
from tests.schemas.bounds import number, on_bounds, outside_bounds

COMMANDS = ("run", "features", "submit")
FIELDS = RunOptions.model_fields
runner = CliRunner()


def _params(command: str) -> dict[str, Any]:
    """The command's click parameters named as a RunOptions field."""
    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return {p.name: p for p in params if p.name in FIELDS}


def _annotations(command: str) -> dict[str, Any]:
    """The command function's parameter types, `Annotated[...]` stripped (from the signature:
    the typer that Flower pins keeps no annotation on its click parameters)."""
    group = typer.main.get_command(app)
    callback = group.commands[command].callback  # type: ignore[attr-defined]
    signature = inspect.signature(callback, eval_str=True)
    return {
        n: get_args(p.annotation)[0] if get_origin(p.annotation) is Annotated else p.annotation
        for n, p in signature.parameters.items()
    }


def _bare(annotation: Any) -> Any:
    """`X | None` → X, as typer reads an optional option."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    optional = get_origin(annotation) in (Union, UnionType) and len(args) == 1
    return args[0] if optional else annotation


def _bounds(name: str) -> tuple[float | None, float | None]:
    low = high = None
    for limit in FIELDS[name].metadata:
        match limit:
            case Ge(ge=v) | Gt(gt=v):
                low = number(v)
            case Le(le=v) | Lt(lt=v):
                high = number(v)
    return low, high


def _param_bounds(param: Any) -> tuple[Any, Any]:
    """An option's (min, max): on the parameter in typer ≥ 0.21, on its click range type in the
    older typer that Flower pins."""
    holder = param if hasattr(param, "min") else param.type
    return getattr(holder, "min", None), getattr(holder, "max", None)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_takes_every_run_option_as_the_contract_declares_it(command: str) -> None:
    params = _params(command)
    assert sorted(params) == sorted(FIELDS)
    for name, param in params.items():
        info = FIELDS[name]
        assert param.default == info.default, name
        assert _param_bounds(param) == _bounds(name), name
        assert param.help == info.description, name
        assert _bare(_annotations(command)[name]) == _bare(info.annotation), name


def test_each_run_option_has_the_same_flags_in_every_command() -> None:
    flags = {c: {n: (p.opts, p.secondary_opts) for n, p in _params(c).items()} for c in COMMANDS}
    assert flags["features"] == flags["run"] == flags["submit"]
    # today's names, which scripts call
    assert flags["run"]["fallback_mpp"] == (["--mpp"], [])
    assert flags["run"]["keep_jpeg"] == (["--keep-jpeg"], ["--decode-tiles"])
    assert flags["run"]["force"] == (["--force"], ["--no-force"])


@pytest.mark.parametrize("command", ["run", "submit"])
def test_fail_on_flags_is_an_option_of_run_and_submit(command: str) -> None:
    group = typer.main.get_command(app)
    names = {p.name for p in group.commands[command].params}  # type: ignore[attr-defined]
    assert "fail_on_flags" in names


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_each_run_option_has_a_help_of_full_sentences(name: str) -> None:
    text = FIELDS[name].description
    assert text and text == text.strip() and "\n" not in text and "  " not in text, name
    assert text.endswith("."), name


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        (BatchRequest, {"slides", "model", "out"}),
        (RunSpec, {"slides", "model", "out", "scheduler", "n_workers", "cluster",
                   "stages"}),
    ],
)  # fmt: skip
def test_the_run_spec_and_the_service_request_take_the_run_options_unchanged(
    model: type[BaseModel], extra: set[str]
) -> None:
    fields = model.model_fields
    assert set(fields) - set(FIELDS) == extra
    for name, info in FIELDS.items():
        theirs = fields[name]
        assert (theirs.annotation, theirs.default, theirs.metadata, theirs.description) == (
            info.annotation, info.default, info.metadata, info.description
        ), name  # fmt: skip
    for key in ("extra", "allow_inf_nan"):
        assert model.model_config.get(key) == RunOptions.model_config[key], key


def _refused(model: type[BaseModel], field: str, fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(fields)
    assert [e["loc"][0] for e in caught.value.errors()] == [field]


@pytest.mark.parametrize(("field", "value"), outside_bounds())
def test_a_value_outside_a_bound_is_refused_by_every_contract(field: str, value: float) -> None:
    _refused(RunOptions, field, {field: value})
    paths = {"slides": ["/data/a.svs"], "model": "/data/model", "out": "/data/out"}
    _refused(BatchRequest, field, {**paths, field: value})
    _refused(RunSpec, field, {**paths, field: value})


@pytest.mark.parametrize(("field", "value"), on_bounds())
def test_a_value_on_a_closed_bound_is_taken(field: str, value: float) -> None:
    assert getattr(RunOptions.model_validate({field: value}), field) == value


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("field", "value"), outside_bounds())
def test_a_value_outside_a_bound_is_a_usage_error_naming_the_option(
    command: str, field: str, value: float, tmp_path: Path
) -> None:
    flag = _params(command)[field].opts[0]
    args = [command, str(tmp_path / "x.svs"), "--out", str(tmp_path / "out"), flag, str(value)]
    if command != "features":
        args += ["--model", str(tmp_path)]
    if command == "submit":  # nothing listens there: a refused value never gets that far
        args += ["--server", "http://127.0.0.1:9"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == EXIT_USAGE, (result.output, result.exception)
    assert "Traceback" not in result.output
    assert flag in result.output or field in result.output, result.output
    assert not (tmp_path / "out").exists()
