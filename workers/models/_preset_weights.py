"""Where an encoder preset's weights are on this machine: a file the lab names, or the Hugging
Face cache already on disk (`hub/models--Org--Name/snapshots/<revision>/<file>`), read with
huggingface_hub's own cache functions and never the network. Fills presets from them, and lists
every preset with what was found."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slidemill.workers.errors import ModelBundleError, PresetWeightsError
from slidemill.workers.models._preset_encoder import PresetEncoder
from slidemill.workers.models._presets import PRESETS, EncoderPreset, get_preset
from slidemill.workers.models._weights import read_state_dict


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, read now (the library
    reads them once, at import), else huggingface_hub's own default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_repo_dir(preset: EncoderPreset, cache_dir: Path | None = None) -> Path:
    """The cache folder of the preset's repository (`models--Org--Name`), existing or not."""
    from huggingface_hub.file_download import repo_folder_name

    root = cache_dir if cache_dir is not None else hub_cache_dir()
    return root / repo_folder_name(repo_id=preset.hub_id, repo_type="model")


@dataclass(frozen=True, slots=True)
class PresetWeights:
    """A preset's weight file found on this machine."""

    preset: str
    """The preset's name."""
    path: Path
    """The file (in the cache, the snapshot's link to its blob)."""
    source: str
    """What a bundle records: the file's absolute path, or "hf:<hub id>@<revision>/<file>"."""


def find_preset_weights(name: str, cache_dir: Path | None = None) -> PresetWeights | None:
    """The preset's weights in the Hugging Face cache at the revision `refs/main` names (the
    first of its publisher's files that is there), or None; touches no network."""
    from huggingface_hub import try_to_load_from_cache

    preset = get_preset(name)
    root = cache_dir if cache_dir is not None else hub_cache_dir()
    for filename in preset.weight_files:
        found = try_to_load_from_cache(preset.hub_id, filename, cache_dir=root)
        if isinstance(found, str):
            path = Path(found)
            revision = path.parent.name  # snapshots/<revision>/<file>
            return PresetWeights(name, path, f"hf:{preset.hub_id}@{revision}/{filename}")
    return None


def resolve_preset_weights(
    name: str, file: Path | None = None, cache_dir: Path | None = None
) -> PresetWeights:
    """The preset's weights: `file` when given, else the Hugging Face cache; a missing file or
    cache entry is one line naming what was expected where."""
    preset = get_preset(name)
    if file is not None:
        if not file.is_file():
            raise PresetWeightsError(
                f"{file}: no such weights file for encoder preset {name!r} "
                f"({preset.hub_id} ships {' or '.join(preset.weight_files)})"
            )
        return PresetWeights(name, file, str(file.resolve()))
    found = find_preset_weights(name, cache_dir)
    if found is None:
        files = " or ".join(preset.weight_files)
        raise PresetWeightsError(
            f"no weights for encoder preset {name!r}: no {files} of {preset.hub_id} in the "
            f"Hugging Face cache {hub_repo_dir(preset, cache_dir)}; download it once where the "
            f"hub is reachable (hf download {preset.hub_id} {preset.weight_files[0]}, "
            f"{preset.licence}) or give the file (--encoder-weights)"
        )
    return found


def fill_preset(encoder: PresetEncoder, weights: PresetWeights) -> int:
    """Load the found file into `encoder` (built on the meta device or not); tensors unused."""
    state = read_state_dict(weights.path, f"{weights.preset} weights")
    return encoder.load_published_state(state, weights.source)


def load_preset_encoder(
    name: str,
    file: Path | None = None,
    *,
    depth: int | None = None,
    cache_dir: Path | None = None,
) -> tuple[PresetEncoder, PresetWeights]:
    """The preset with its publisher's weights (from `file`, else the cache), in eval mode. Built
    on the meta device, so a 1.1 B-parameter model is not first initialised at random."""
    weights = resolve_preset_weights(name, file, cache_dir)
    with torch.device("meta"):
        encoder = PresetEncoder(get_preset(name), depth)
    fill_preset(encoder, weights)
    return encoder.eval(), weights


def preset_parts(encoder: nn.Module) -> list[PresetEncoder]:
    """The presets in an encoder: itself, or the parts of an "A+B" encoder."""
    return [m for m in encoder.modules() if isinstance(m, PresetEncoder)]


def fill_presets(
    encoder: nn.Module, file: Path | None = None, cache_dir: Path | None = None
) -> PresetWeights | None:
    """Fill the one preset in `encoder` from `file` or the cache and say from where; None when
    it holds no preset. An encoder holds at most one preset (one weights file)."""
    parts = preset_parts(encoder)
    if not parts:
        return None
    if len(parts) > 1:
        names = "+".join(p.preset.name for p in parts)
        raise ModelBundleError(
            f"encoder {names!r}: one preset per encoder (a bundle records one weights file)"
        )
    weights = resolve_preset_weights(parts[0].preset.name, file, cache_dir)
    fill_preset(parts[0], weights)
    return weights


@dataclass(frozen=True, slots=True)
class PresetStatus:
    """One preset, and whether its weights are on this machine (a row of `slidemill encoders`)."""

    preset: EncoderPreset
    """The preset: tile px, µm/px, width, parameter count, licence."""
    weights: PresetWeights | None
    """Its weights found in the Hugging Face cache; None when not there."""
    looked_in: Path
    """The cache folder looked in for them."""


def preset_statuses(cache_dir: Path | None = None) -> list[PresetStatus]:
    """Every preset, in order, with its weights in the Hugging Face cache or None; reads only
    the cache's folders (no weights, no network)."""
    return [
        PresetStatus(p, find_preset_weights(p.name, cache_dir), hub_repo_dir(p, cache_dir))
        for p in PRESETS.values()
    ]
