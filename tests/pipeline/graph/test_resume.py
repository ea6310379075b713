"""Resume decisions (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slidemill.pipeline.graph import Action, ResumeKey, decide, key_of, partial_is_valid
from slidemill.schemas import Provenance, SlideResult, SlideStatus, TilingSpec

TILING = TilingSpec(mpp=0.5, tile_px=224)
KEY = ResumeKey(
    path="/s/a.svs",
    file_size=1000,
    file_mtime_ns=123,
    tiling=TILING,
    model_sha256="m" * 64,
    slidemill_version="1.0",
    fallback_mpp=None,
)


def result(status: SlideStatus = "done", key: ResumeKey = KEY) -> SlideResult:
    prov = Provenance(
        slidemill_version=key.slidemill_version,
        model_sha256=key.model_sha256,
        tiling=key.tiling,
        fallback_mpp=key.fallback_mpp,
        file_size=key.file_size,
        file_mtime_ns=key.file_mtime_ns,
    )
    if status == "done":
        return SlideResult(
            slide_id="a", path=key.path, status="done", label="x", probabilities=(1.0,),
            provenance=prov,
        )  # fmt: skip
    return SlideResult(
        slide_id="a", path=key.path, status=status, error=f"{key.path}: x", provenance=prov
    )


def test_same_inputs_are_kept() -> None:
    assert key_of(result().provenance, KEY.path) == KEY
    assert decide(result(), KEY, force=False) is Action.REUSE
    assert decide(result("skipped"), KEY, force=False) is Action.REUSE


def test_failed_forced_or_unknown_run() -> None:
    assert decide(result("failed"), KEY, force=False) is Action.RUN
    assert decide(result(), KEY, force=True) is Action.RUN
    assert decide(None, KEY, force=False) is Action.RUN
    assert decide(result(), None, force=False) is Action.RUN


CHANGES: dict[str, Any] = {
    "path": "/s/b.svs",
    "file_size": 1001,
    "file_mtime_ns": 124,
    "tiling": TilingSpec(mpp=0.5, tile_px=256),
    "model_sha256": "n" * 64,
    "slidemill_version": "1.1",
    "fallback_mpp": 0.25,
}


@given(st.sampled_from(sorted(CHANGES)))
def test_any_change_redoes_the_slide(field: str) -> None:
    changed = dataclasses.replace(KEY, **{field: CHANGES[field]})
    assert decide(result(), changed, force=False) is Action.RUN
    assert not partial_is_valid(KEY, changed, force=False)


def test_partial_work_needs_the_same_key_and_no_force() -> None:
    assert partial_is_valid(KEY, KEY, force=False)
    assert not partial_is_valid(KEY, KEY, force=True)
    assert not partial_is_valid(None, KEY, force=False)


def test_results_without_file_identity_are_not_trusted() -> None:
    old = Provenance(slidemill_version="1.0", model_sha256="m" * 64, tiling=TILING)
    assert key_of(old, KEY.path) is None


@pytest.mark.parametrize("status", ["done", "skipped"])
def test_round_trip_through_json_keeps_the_decision(status: SlideStatus) -> None:
    again = SlideResult.model_validate_json(result(status).model_dump_json())
    assert decide(again, KEY, force=False) is Action.REUSE
