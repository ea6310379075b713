"""Sites (`synth --site NAME`): a site's stain and scanner come from its name alone, shift every
slide of a lesion family's set on top of the slide's own, and are recorded in the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
from hypothesis import given
from hypothesis import strategies as st
from skimage.color import rgb2hed
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.pipeline.synth import Scene, load_truth, site_shift, write_benchmark_set
from slidemill.schemas.errors import InvalidInputError


def test_a_site_s_shift_comes_from_its_name_alone() -> None:
    north, south = site_shift("north"), site_shift("south")
    assert site_shift("north") == north and north != south
    for shift in (north, south):
        h, e, rest = shift.stain_scale
        assert 0.65 <= h <= 1.4 and 0.65 <= e <= 1.4 and rest == 1.0
        assert all(0.94 <= w <= 1.03 for w in shift.white)
        assert 0.0 <= shift.blur_um <= 1.1 and 55 <= shift.jpeg_quality <= 92
    for bad in ("", "../x", "a b", "-lead", "x" * 65):
        with pytest.raises(InvalidInputError, match="site name"):
            site_shift(bad)


@given(st.text(min_size=1, max_size=20))
def test_any_name_is_a_valid_site_or_refused_as_a_site_name(name: str) -> None:
    try:
        shift = site_shift(name)
    except InvalidInputError as e:
        assert "site name" in str(e)
    else:  # a valid name is a safe file-name prefix
        assert "/" not in shift.name and ".." not in shift.name[:2]


def test_a_shift_composes_with_a_slide_s_own_stain_and_scanner() -> None:
    scene = Scene("crowding", stain_scale=(1.2, 0.8, 1.0), white=(1.0, 0.98, 1.0), blur_um=0.6,
                  jpeg_quality=90)  # fmt: skip
    shift = site_shift("south")
    shifted = shift.apply(scene)
    assert shifted.site == "south" and scene.site is None
    for got, own, site in zip(
        shifted.stain_scale, scene.stain_scale, shift.stain_scale, strict=True
    ):
        assert got == pytest.approx(own * site)
    assert shifted.white == pytest.approx(
        tuple(a * b for a, b in zip(scene.white, shift.white, strict=True))
    )
    assert shifted.blur_um == pytest.approx(np.hypot(0.6, shift.blur_um))  # blurs add in quadrature
    assert shifted.jpeg_quality == min(90, shift.jpeg_quality)


def test_a_site_s_set_is_named_shifted_and_recorded(sample_slide: Path, tmp_path: Path) -> None:
    """Two sites' sets from one seed: the same tissue and lesions, differently stained and
    scanned; the truth names the site and rebuilds the shifted slide."""
    sets = {
        name: write_benchmark_set(
            tmp_path / name, n=1, positive_fraction=1.0, size=(1024, 1024), texture=sample_slide,
            generator="crowding", site=site_shift(name),
        )[0]
        for name in ("north", "south")
    }  # fmt: skip
    north, south = sets["north"], sets["south"]
    assert north.path.name == "north-crowding-000.svs" and south.slide_id == "south-crowding-000"
    assert north.slide.lesions == south.slide.lesions  # the same slide, seen by two sites
    assert north.slide.scene is not None and south.slide.scene is not None
    assert json.loads(north.truth_path.read_text())["scene"]["site"] == "north"
    assert load_truth(north.truth_path) == north.slide
    hed = {}
    for name, s in sets.items():
        with openslide.OpenSlide(str(s.path)) as slide:
            rgb = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]))[..., :3]
        hed[name] = rgb2hed(rgb).reshape(-1, 3)
    tissue = hed["north"][:, 0] + hed["north"][:, 1] > 0.05  # stained, not glass
    e = {n: float(v[tissue, 1].mean()) for n, v in hed.items()}
    # south's eosin is 1.55x north's (their draws: 1.38 vs 0.89), the rest of the shift aside
    assert site_shift("south").stain_scale[1] / site_shift("north").stain_scale[1] > 1.5
    assert e["south"] > 1.3 * e["north"], e


def test_a_site_needs_a_lesion_family(sample_slide: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="lesion family"):
        write_benchmark_set(tmp_path, n=1, size=(1024, 1024), texture=sample_slide,
                            site=site_shift("north"))  # fmt: skip
    runner = CliRunner()
    base = ["synth", "--out", str(tmp_path / "c"), "--n", "1", "--size", "1024x1024"]
    res = runner.invoke(app, [*base, "--generator", "textured", "--site", "north"])
    assert res.exit_code == 2 and "--site north" in res.output, res.output
    res = runner.invoke(app, [*base, "--generator", "crowding", "--site", "../up"])
    assert res.exit_code == 2 and "site name" in res.output, res.output
    assert not (tmp_path / "c").exists()
