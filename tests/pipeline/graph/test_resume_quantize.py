"""`--quantize` in the resume key: int8 features are not float32's, so changing it redoes a slide,
while results and interrupted plans written before the option existed still read (as 'none')."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pydantic import TypeAdapter

from slidemill.pipeline.graph import (
    Action,
    ResumeKey,
    SlideJob,
    decide,
    key_of,
    partial_is_valid,
    resume_key,
)
from slidemill.schemas import SlideResult, TilingSpec

TILING = TilingSpec(mpp=0.5, tile_px=224)


def done(job: SlideJob) -> SlideResult:
    """The result a run of `job` publishes."""
    return SlideResult(
        slide_id="a", path=job.path, status="done", label="x", probabilities=(1.0,),
        class_names=("x", "y"), provenance=job.provenance(),
    )  # fmt: skip


def job_for(path: Path, quantize: str) -> SlideJob:
    key = resume_key(path, TILING, "m" * 64, None, quantize)  # type: ignore[arg-type]
    assert key is not None
    return SlideJob(
        slide_id="a", path=str(path), out="/o", tiling=TILING, fallback_mpp=None,
        tiles_per_task=64, model_bundle="/m", model_sha256="m" * 64, class_names=("x", "y"),
        feature_dim=8, batch_size=None, key=key, quantize=quantize,  # type: ignore[arg-type]
    )  # fmt: skip


def test_changing_quantize_redoes_the_slide_and_its_partial_work(tmp_path: Path) -> None:
    slide = tmp_path / "a.svs"
    slide.write_bytes(b"x")
    plain, int8 = job_for(slide, "none"), job_for(slide, "int8")
    assert plain.key is not None and int8.key is not None
    assert int8.key.quantize == "int8" and plain.key.quantize == "none"
    assert plain.key != int8.key
    assert not partial_is_valid(plain.key, int8.key, force=False)
    earlier = done(int8)  # what an int8 run's result records
    assert earlier.provenance.quantize == "int8"
    assert decide(earlier, int8.key, force=False) is Action.REUSE
    assert decide(earlier, plain.key, force=False) is Action.RUN
    assert decide(done(plain), int8.key, force=False) is Action.RUN


def test_a_result_written_before_the_option_is_kept_for_a_float_run(tmp_path: Path) -> None:
    slide = tmp_path / "a.svs"
    slide.write_bytes(b"x")
    plain, int8 = job_for(slide, "none"), job_for(slide, "int8")
    old = json.loads(done(plain).model_dump_json())
    del old["provenance"]["quantize"]  # as result.json was before --quantize
    earlier = SlideResult.model_validate(old)
    assert key_of(earlier.provenance, str(slide)) == plain.key
    assert decide(earlier, plain.key, force=False) is Action.REUSE
    assert decide(earlier, int8.key, force=False) is Action.RUN


def test_a_key_saved_in_a_plan_before_the_option_still_reads() -> None:
    key = ResumeKey(
        path="/s/a.svs", file_size=1, file_mtime_ns=2, tiling=TILING, model_sha256="m" * 64,
        slidemill_version="1.0", fallback_mpp=None,
    )  # fmt: skip
    saved = json.loads(TypeAdapter(ResumeKey).dump_json(key))
    del saved["quantize"]  # a plan.json an interrupted run wrote before --quantize
    again = TypeAdapter(ResumeKey).validate_python(saved)
    assert again == key and again.quantize == "none"
    assert partial_is_valid(again, key, force=False)
    assert not partial_is_valid(again, dataclasses.replace(key, quantize="int8"), force=False)
