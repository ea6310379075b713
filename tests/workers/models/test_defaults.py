"""The encoder used when none is named, and the tiles an encoder is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidemill.workers.models import PRESETS, WEIGHT_FREE, default_encoder, encoder_tiling
from tests.workers.models.test_presets import into_hub_cache


def test_without_a_presets_weights_the_default_is_the_weight_free_encoder_saying_so(
    tmp_path: Path,
) -> None:
    choice = default_encoder(tmp_path / "empty-cache")
    assert choice.name == WEIGHT_FREE == "handcrafted"
    assert choice.notice is not None and str(tmp_path / "empty-cache") in choice.notice
    assert "\n" not in choice.notice


def test_the_first_preset_whose_weights_are_cached_is_the_default(tmp_path: Path) -> None:
    for hub_id in ("owkin/phikon-v2", "owkin/phikon"):  # both there: the table's order decides
        file = tmp_path / "download" / "model.safetensors"
        file.parent.mkdir(exist_ok=True)
        file.write_bytes(hub_id.encode())  # the choice reads folders, never the weights
        into_hub_cache(tmp_path / "hf", hub_id, file)
    choice = default_encoder(tmp_path / "hf" / "hub")
    assert choice == type(choice)("phikon", None)
    assert list(PRESETS).index("phikon") < list(PRESETS).index("phikon-v2")


@pytest.mark.parametrize("name", ["uni", "virchow2", "h-optimus-0", "uni+handcrafted"])
def test_a_preset_decides_the_tiles_unless_told_otherwise_and_then_warns(name: str) -> None:
    preset = PRESETS[name.split("+")[0]]
    own = encoder_tiling(name, None, None)
    assert (own.tile_px, own.mpp, own.warning) == (preset.tile_px, preset.mpp, None)
    same = encoder_tiling(name, preset.tile_px, preset.mpp)
    assert same.warning is None
    other = encoder_tiling(name, None, 1.0)
    assert (other.tile_px, other.mpp) == (preset.tile_px, 1.0)
    assert other.warning is not None and preset.name in other.warning and "1 µm/px" in other.warning


def test_an_encoder_without_a_preset_takes_its_measured_tiles_or_the_plain_default() -> None:
    handcrafted, resnet = (
        encoder_tiling("handcrafted", None, None),
        encoder_tiling("resnet18", None, None),
    )
    assert (handcrafted.tile_px, handcrafted.mpp) == (112, 0.5)
    assert (resnet.tile_px, resnet.mpp) == (224, 0.5)
    told = encoder_tiling("resnet18", 256, 0.25)
    assert (told.tile_px, told.mpp, told.warning) == (256, 0.25, None)
