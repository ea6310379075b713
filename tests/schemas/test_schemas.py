"""The pydantic contracts and their JSON Schema export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from slidemill.schemas import SCHEMA_MODELS, Provenance, SlideResult, TilingSpec, write_json_schemas


def test_every_contract_is_exported_as_json_schema(tmp_path: Path) -> None:
    paths = write_json_schemas(tmp_path)
    assert {p.name for p in paths} == {f"{n}.schema.json" for n in SCHEMA_MODELS}
    tiling = json.loads((tmp_path / "tiling_spec.schema.json").read_text())
    assert set(tiling["required"]) == {"mpp", "tile_px"}
    assert tiling["properties"]["mpp"]["exclusiveMinimum"] == 0


def test_tiling_overlap_must_be_smaller_than_the_tile() -> None:
    assert TilingSpec(mpp=0.5, tile_px=256, overlap_px=64).stride_px == 192
    with pytest.raises(ValidationError, match="overlap_px"):
        TilingSpec(mpp=0.5, tile_px=256, overlap_px=256)


def test_slide_result_rules() -> None:
    prov = Provenance(slidemill_version="0")
    with pytest.raises(ValidationError, match="label"):
        SlideResult(slide_id="a", path="/a", status="done", class_names=("x", "y"), provenance=prov)
    # features-only: done, no classes, no diagnosis
    assert SlideResult(slide_id="a", path="/a", status="done", provenance=prov).label is None
    with pytest.raises(ValidationError, match="error line"):
        SlideResult(slide_id="a", path="/a", status="failed", provenance=prov)
    with pytest.raises(ValidationError, match="one line"):
        SlideResult(slide_id="a", path="/a", status="failed", error="x\ny", provenance=prov)
    ok = SlideResult(
        slide_id="a", path="/a", status="skipped", error="/a: no tissue", provenance=prov
    )
    assert SlideResult.model_validate_json(ok.model_dump_json()) == ok
