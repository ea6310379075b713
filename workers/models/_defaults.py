"""What an encoder is when the user names none, and the tiles it is given: a preset whose weights
are on this machine decides both; without one, the best weight-free encoder measured, never
random features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidemill.workers.models._encoders import ENCODERS
from slidemill.workers.models._preset_weights import hub_cache_dir, preset_statuses
from slidemill.workers.models._presets import PRESETS

WEIGHT_FREE = "handcrafted"
"""The default without a preset's weights: the best encoder without weights on both generators'
benchmarks (docs/learning-studies.md, "Encoders"); a random CNN carries no signal."""
TILE_PX = 224
"""Tile edge of an encoder that is not a preset, unless given."""
TILE_MPP = 0.5
"""µm/px of its tiles, unless given."""
MEASURED_TILES = {WEIGHT_FREE: (112, 0.5)}
"""Encoders that are not presets, with the tiles their benchmark figures were measured on."""


@dataclass(frozen=True, slots=True)
class EncoderChoice:
    """The encoder used when none is named."""

    name: str
    """Registered encoder name."""
    notice: str | None
    """One line for the user when it is the weight-free fallback; None for a found preset."""


def default_encoder(cache_dir: Path | None = None) -> EncoderChoice:
    """The first preset (in `PRESETS` order) whose weights are in the Hugging Face cache, else
    `WEIGHT_FREE` with a notice saying so. Reads only the cache's folders."""
    for status in preset_statuses(cache_dir):
        if status.weights is not None:
            return EncoderChoice(status.preset.name, None)
    where = cache_dir if cache_dir is not None else hub_cache_dir()
    return EncoderChoice(
        WEIGHT_FREE,
        f"no encoder preset's weights in {where}: using {WEIGHT_FREE!r}, the best encoder "
        "without weights on the benchmarks (`slidemill encoders` lists the presets)",
    )


@dataclass(frozen=True, slots=True)
class EncoderTiling:
    """The tiles an encoder is given."""

    tile_px: int
    """Tile edge in pixels."""
    mpp: float
    """µm/px."""
    warning: str | None
    """One line when the user's tiles differ from those the encoder's preset was trained on."""


def encoder_tiling(encoder: str, tile_px: int | None, mpp: float | None) -> EncoderTiling:
    """A preset's own tile size and µm/px (that of the preset part of "A+B"), where the user
    gives none; the user's where given, with a warning when they differ from the preset's. An
    encoder that is not a preset takes the tiles it was measured on (`MEASURED_TILES`), else
    `TILE_PX` at `TILE_MPP`, unless given."""
    presets = [PRESETS[part] for part in ENCODERS.split(encoder) if part in PRESETS]
    if not presets:
        own_px, own_mpp = MEASURED_TILES.get(encoder, (TILE_PX, TILE_MPP))
        return EncoderTiling(
            tile_px if tile_px is not None else own_px, mpp if mpp is not None else own_mpp, None
        )
    preset = presets[0]
    px = tile_px if tile_px is not None else preset.tile_px
    at = mpp if mpp is not None else preset.mpp
    warning = None
    if (px, at) != (preset.tile_px, preset.mpp):
        warning = (
            f"encoder {preset.name} was trained on {preset.tile_px}-px tiles at "
            f"{preset.mpp:g} µm/px; these are {px} px at {at:g} µm/px, so its features may "
            "mean less"
        )
    return EncoderTiling(px, at, warning)
