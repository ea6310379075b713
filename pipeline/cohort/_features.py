"""`slidemill features`: the graph up to the encoder, once, so that training, evaluation and new
heads reuse the features without touching the slides again.

The encoder the features come from is saved beside them as `encoder-bundle/` (a model bundle
whose head is a placeholder): training builds its bundles from that encoder, so features at run
time match those at training time. A folder holds the features of one encoder and one tiling
spec; the resume key (model sha256, tiling spec) redoes any slide whose features came from
something else.
"""

from __future__ import annotations

from pathlib import Path

from slidemill.pipeline.errors import InvalidInputError
from slidemill.pipeline.graph import claim_output
from slidemill.schemas.layout import ENCODER_BUNDLE, MANIFEST_JSON
from slidemill.workers import file_sha256, init_bundle, read_manifest
from slidemill.workers.models import ENCODERS, PRESETS, WEIGHT_FREE

PLACEHOLDER_CLASSES = ("placeholder-a", "placeholder-b")


def encoder_bundle(
    out: Path,
    *,
    encoder: str,
    encoder_weights: Path | None,
    tile_mpp: float,
    tile_px: int,
    seed: int,
    encoder_file: Path | None = None,
    hub_cache: Path | None = None,
) -> Path:
    """The features folder's encoder bundle: made on first use, checked against the request
    after that (features of another encoder or resolution belong in another folder).

    `encoder_file` is the TorchScript file of `encoder="torchscript"`; a preset's weights come
    from `encoder_weights` or the Hugging Face cache `hub_cache` (default: the user's)."""
    bundle = out / ENCODER_BUNDLE
    notes: list[str] = []
    if encoder_file is not None:
        if not encoder_file.is_file():
            raise InvalidInputError(f"{encoder_file}: no such TorchScript file")
        notes.append(f"TorchScript file sha256 {file_sha256(encoder_file)}")
    presets = [part for part in ENCODERS.split(encoder) if part in PRESETS]
    if encoder_weights is not None:
        notes.append(f"encoder weights sha256 {file_sha256(encoder_weights)}")
    elif presets:
        # the cache's file is found (and its sha256 recorded in the manifest) by init_bundle
        notes.append(f"published weights of {', '.join(presets)}")
    elif encoder_file is None and ENCODERS.split(encoder) != [WEIGHT_FREE]:
        notes.append(f"random encoder, seed {seed}")
    weights_note = "; ".join(notes) or "no weights"
    if (bundle / MANIFEST_JSON).is_file():
        m = read_manifest(bundle)
        wanted = (encoder, tile_mpp, tile_px)
        if (m.encoder, m.input_mpp, m.tile_px) != wanted or weights_note not in m.description:
            raise InvalidInputError(
                f"{out}: holds features of {m.encoder} at {m.input_mpp} µm/px, {m.tile_px} px "
                f"({m.description}); write these to another --out"
            )
        return bundle
    claim_output(out)
    init_bundle(
        bundle,
        encoder=encoder,
        head="mean_pool",
        class_names=PLACEHOLDER_CLASSES,
        mpp=tile_mpp,
        tile_px=tile_px,
        seed=seed,
        encoder_weights=encoder_weights,
        encoder_file=encoder_file,
        hub_cache=hub_cache,
        description=f"feature encoder for slidemill features ({weights_note}); "
        "the head is a placeholder",
    )
    return bundle
