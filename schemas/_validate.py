"""Building a contract from user input: a validation error becomes one line naming the field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from slidemill.schemas.errors import InvalidInputError

M = TypeVar("M", bound=BaseModel)


def describe(err: ValidationError) -> str:
    """A pydantic error in one line: `field: message; field: message`."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "value"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def validated(contract: type[M], /, **fields: Any) -> M:
    """`contract(**fields)`, with a validation error raised as `InvalidInputError` (exit 2)."""
    try:
        return contract.model_validate(fields)
    except ValidationError as err:
        raise InvalidInputError(f"{contract.__name__}: {describe(err)}") from err
