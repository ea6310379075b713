"""Pure resume decisions: is an earlier result, or an interrupted slide's partial work, still
valid for this run? Nothing here touches the disk; the tasks and the batch carry it out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from slidemill.schemas import Provenance, SlideResult, TilingSpec


@dataclass(frozen=True, slots=True)
class ResumeKey:
    """What a slide's outputs depend on. Any change means the slide is redone.

    File identity is size + modification time, not a hash: deciding must take milliseconds
    even for a 3 GB slide (the sha256 is still recorded in every result)."""

    path: str
    """Absolute path of the slide file."""
    file_size: int
    """Size in bytes."""
    file_mtime_ns: int
    """Modification time."""
    tiling: TilingSpec
    """Tiling spec of the run."""
    model_sha256: str
    """The model bundle's id."""
    slidemill_version: str
    """The version that produced the outputs."""
    fallback_mpp: float | None
    """The --mpp fallback (it changes tiles of slides without mpp)."""
    quantize: Literal["none", "int8"] = "none"
    """The run's --quantize: int8 features are not float32's. Last, with a default, so the key
    an interrupted run saved in its plan before the option existed still reads (as 'none')."""


def key_of(provenance: Provenance, path: str) -> ResumeKey | None:
    """The key an earlier result was produced under, or None if it predates resume support."""
    if (
        provenance.file_size is None
        or provenance.file_mtime_ns is None
        or provenance.tiling is None
        or provenance.model_sha256 is None
    ):
        return None
    return ResumeKey(
        path=path,
        file_size=provenance.file_size,
        file_mtime_ns=provenance.file_mtime_ns,
        tiling=provenance.tiling,
        model_sha256=provenance.model_sha256,
        slidemill_version=provenance.slidemill_version,
        fallback_mpp=provenance.fallback_mpp,
        quantize=provenance.quantize,
    )


class Action(StrEnum):
    """What to do with a slide at the start of a run."""

    REUSE = "reuse"
    """An earlier result is still valid: keep it, run nothing."""
    RUN = "run"
    """Run the slide (resuming its partial work where that is still valid)."""


def decide(previous: SlideResult | None, current: ResumeKey | None, force: bool) -> Action:
    """Reuse a finished (done or skipped) result made under the same key; run otherwise.

    A failed result is never reused: the cause may have been transient, or fixed since.
    """
    if force or previous is None or current is None or previous.status == "failed":
        return Action.RUN
    if key_of(previous.provenance, previous.path) == current:
        return Action.REUSE
    return Action.RUN


def partial_is_valid(saved: ResumeKey | None, current: ResumeKey | None, force: bool) -> bool:
    """Whether an interrupted slide's plan and finished blocks can be kept."""
    return not force and saved is not None and saved == current
