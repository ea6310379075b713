"""Resume decisions (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slidemill.pipeline.graph import (
    Action,
    ResumeKey,
    SlideJob,
    decide,
    encode_block,
    key_of,
    mil_slide,
    partial_is_valid,
    plan_slide,
    publish,
    published_here,
    reduce_slide,
    resume_key,
    tile_block,
    write_result,
    write_tiles,
)
from slidemill.schemas import Provenance, SlideResult, SlideStatus, TilingSpec, TissueMethod

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


def test_tasks_run_again_after_their_slide_was_published_find_it_done(
    slides_dir: Path, tmp_path: Path
) -> None:
    """A worker retiring through --lifetime can take a finished task's result with it; dask then
    runs that task and its dependencies again, after the slide's folder has been published and
    its work folder is gone. They return what was published instead of failing on the store."""
    path = slides_dir / "synth-svs.svs"
    tiling = TilingSpec(mpp=2.0, tile_px=64, tissue_method=TissueMethod.NONE, min_tissue_fraction=0)
    job = SlideJob(
        slide_id="synth-svs", path=str(path), out=str(tmp_path), tiling=tiling,
        fallback_mpp=0.5, tiles_per_task=64, model_bundle="", model_sha256="m1",
        class_names=("a", "b"), feature_dim=1, batch_size=1,
        key=resume_key(path, tiling, "m1", 0.5),
    )  # fmt: skip
    plan = plan_slide(job)
    assert published_here(plan) is None  # still being built
    for start, stop in plan.blocks:
        write_tiles(plan, start, stop)
    result = SlideResult(
        slide_id=job.slide_id, path=job.path, status="done", class_names=("a", "b"),
        probabilities=(0.25, 0.75), label="b", n_tiles=plan.n_tiles, provenance=plan.provenance,
    )  # fmt: skip
    write_result(job.work, result)
    publish(tmp_path, job.slide_id)  # as reduce_slide does
    assert published_here(plan) == result
    start, stop = plan.blocks[0]
    assert tile_block(plan, start, stop) == 0.0
    assert encode_block(plan, start, stop, 0.0).seconds == 0.0
    mil = mil_slide(plan, [])
    assert mil.probabilities == result.probabilities
    assert reduce_slide(plan, mil, [], []) == result
    # the same slide published under another key (another model) is not this batch's work
    other = dataclasses.replace(job, key=resume_key(path, tiling, "m2", 0.5))
    assert published_here(dataclasses.replace(plan, job=other)) is None
