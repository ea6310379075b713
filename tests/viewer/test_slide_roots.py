"""The service's viewer serves a slide's pixels only from inside the allowed roots, checked at
every open: a slide swapped for a link after its run is not served."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slidemill.viewer import NotFoundError, SlideSources


def test_a_slide_swapped_for_a_link_out_of_the_roots_is_not_served(
    sample_slide: Path, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    slide, secret = root / "good.svs", outside / "secret.svs"
    shutil.copy(sample_slide, slide)
    shutil.copy(sample_slide, secret)
    assert "<Image" in SlideSources(roots=[root]).dzi(slide)
    slide.unlink()
    slide.symlink_to(secret)
    with pytest.raises(NotFoundError, match="not available"):
        SlideSources(roots=[root]).dzi(slide)
    assert "<Image" in SlideSources().dzi(slide)  # `slidemill view` of a lab's own folders
