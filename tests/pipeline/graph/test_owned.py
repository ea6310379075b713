"""slidemill writes only into folders it made: output folders are claimed before any write, and
a slide's folder is replaced only when slidemill built it."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidemill.pipeline.errors import OutputNotOursError, SlideFolderNotOursError
from slidemill.pipeline.graph import (
    claim_output,
    fresh_work_dir,
    is_own_slide_folder,
    output_refusal,
    publish,
    write_result,
)
from slidemill.schemas import Provenance, SlideResult
from slidemill.schemas.layout import RESULTS_CSV, RUN_MARK, SLIDE_MARK


def _result(slide_id: str) -> SlideResult:
    return SlideResult(
        slide_id=slide_id,
        path=f"/x/{slide_id}.svs",
        status="failed",
        error="e",
        provenance=Provenance(slidemill_version="test"),
    )


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path: Path) -> None:
    new, empty = tmp_path / "a" / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        claim_output(out)
        assert (out / RUN_MARK).is_file()
        claim_output(out)  # slidemill's own folder: taken again


def test_a_folder_of_someone_elses_files_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "victims"
    (out / "precious").mkdir(parents=True)
    (out / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputNotOursError, match=r"did not write \('precious'\)"):
        claim_output(out)
    assert sorted(p.name for p in out.iterdir()) == ["precious"]
    file = tmp_path / "file"
    file.write_text("x")
    assert output_refusal(file) == f"{file}: exists and is not a folder"


def test_a_run_folder_of_an_earlier_version_is_recognised_by_its_content(tmp_path: Path) -> None:
    out = tmp_path / "old-run"
    slide = out / "s1"
    slide.mkdir(parents=True)
    write_result(slide, _result("s1"))
    (out / RESULTS_CSV).write_text("slide_id,path,status\n")
    assert is_own_slide_folder(slide)  # unmarked, but only the layout's names and a result
    assert output_refusal(out) is None
    (slide / "notes.txt").write_text("someone's")
    assert not is_own_slide_folder(slide)
    assert output_refusal(out) is not None


def test_publishing_replaces_only_slidemills_own_slide_folder(tmp_path: Path) -> None:
    claim_output(tmp_path)
    bundle = tmp_path / "bundle"  # a slide named like a model bundle's folder
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    work = fresh_work_dir(tmp_path, "bundle")
    assert (work / SLIDE_MARK).is_file()
    with pytest.raises(SlideFolderNotOursError, match="not written by slidemill"):
        publish(tmp_path, "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json"]
    link = tmp_path / "link"
    link.symlink_to(bundle, target_is_directory=True)  # a link to a folder is not a slide's
    fresh_work_dir(tmp_path, "link")
    with pytest.raises(SlideFolderNotOursError):
        publish(tmp_path, "link")
    fresh_work_dir(tmp_path, "s1")
    publish(tmp_path, "s1")
    fresh_work_dir(tmp_path, "s1")
    assert publish(tmp_path, "s1").is_dir()  # its own earlier result is replaced
