"""A slide is opened only when its real path lies inside the allowed roots at that moment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slidemill.pipeline.errors import MissingSlideError, SlidePathNotAllowedError
from slidemill.pipeline.slides import ReaderCache, check_inside, confirm
from slidemill.pipeline.synth import write_slide
from tests.helpers import synthetic


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_slide(outside / "secret.svs", synthetic(), kind="svs")
    write_slide(root / "good.svs", synthetic(), kind="svs")
    return root, outside


def test_a_file_inside_is_checked_at_its_real_path(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "alias.svs").symlink_to(root / "good.svs")  # a link inside the roots is fine
    checked = check_inside(root / "alias.svs", [root])
    assert checked.path == (root / "good.svs").resolve()
    confirm(checked, root / "alias.svs")


def test_a_link_or_folder_swapped_in_leads_nowhere(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    slide = root / "good.svs"
    checked = check_inside(slide, [root])
    slide.unlink()
    slide.symlink_to(outside / "secret.svs")  # swapped after submission
    with pytest.raises(SlidePathNotAllowedError, match="outside the allowed roots"):
        check_inside(slide, [root])
    with pytest.raises(SlidePathNotAllowedError, match="replaced"):
        confirm(checked, slide)  # the reader opened what was checked, not this
    (root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SlidePathNotAllowedError):
        check_inside(root / "sub" / "secret.svs", [root])
    with pytest.raises(SlidePathNotAllowedError):
        ReaderCache().lease(slide, [root]).__enter__()


def test_a_fifo_or_a_missing_file_fails_at_once(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    os.mkfifo(root / "pipe.svs")  # opening it for reading would block without O_NONBLOCK
    with pytest.raises(MissingSlideError, match="not a regular file"):
        check_inside(root / "pipe.svs", [root])
    with pytest.raises(MissingSlideError, match="file not found"):
        check_inside(root / "gone.svs", [root])


def test_the_cache_reads_a_checked_slide(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with ReaderCache().lease(root / "good.svs", [root]) as reader:
        assert reader.dimensions[0] > 0
