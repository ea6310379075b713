"""Values just outside each bound `RunOptions` declares, derived from its fields' metadata, for
the tests that check every surface (CLI, HTTP API) refuses what the contract refuses."""

from __future__ import annotations

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from slidemill.schemas import RunOptions


def number(bound: object) -> float:
    """A bound as the number it is (an int stays an int: `--retries -1`, not `-1.0`)."""
    assert isinstance(bound, int | float), bound
    return bound


def outside_bounds(model: type[BaseModel] = RunOptions) -> list[tuple[str, float]]:
    """(field, value) for each bounded field of `model`: a bound ±1 on its wrong side, and an
    open bound itself."""
    cases: list[tuple[str, float]] = []
    for name, info in model.model_fields.items():
        for limit in info.metadata:
            match limit:
                case Ge(ge=v):
                    cases.append((name, number(v) - 1))
                case Gt(gt=v):
                    cases += [(name, number(v)), (name, number(v) - 1)]
                case Le(le=v):
                    cases.append((name, number(v) + 1))
                case Lt(lt=v):
                    cases += [(name, number(v)), (name, number(v) + 1)]
    return cases


def on_bounds(model: type[BaseModel] = RunOptions) -> list[tuple[str, float]]:
    """(field, value) for each closed bound of `model`: the bound itself, which it takes."""
    cases: list[tuple[str, float]] = []
    for name, info in model.model_fields.items():
        for limit in info.metadata:
            match limit:
                case Ge(ge=v) | Le(le=v):
                    cases.append((name, number(v)))
    return cases
