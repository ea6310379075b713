"""The base of every contract: immutable, no unknown fields, no NaN or infinity (JSON has none)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """A contract: frozen, `extra="forbid"`, finite floats only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
