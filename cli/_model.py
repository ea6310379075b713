"""`slidemill model …`: bundles with random weights, CLAM imports, a self-supervised encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from slidemill.cli._encoders import chosen_encoder
from slidemill.cli._errors import console
from slidemill.cli._options import (
    EncoderFile,
    EncoderName,
    FallbackMpp,
    HubCache,
    TileMpp,
    TilePx,
    class_list,
)


def model_init(
    out: Annotated[Path, typer.Option(help="New bundle folder.")],
    encoder: EncoderName = None,
    encoder_file: EncoderFile = None,
    encoder_weights: Annotated[
        Path | None,
        typer.Option(
            help="Local weights file for the encoder; for a preset (see `slidemill encoders`), "
            "its publisher's file, by default found in the Hugging Face cache."
        ),
    ] = None,
    hub_cache: HubCache = None,
    head: Annotated[str, typer.Option(help="Registered MIL head.")] = "abmil_gated",
    classes: Annotated[
        str, typer.Option(help="Comma-separated class names.")
    ] = "negative,positive",
    mpp: TileMpp = None,
    tile_px: TilePx = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a bundle with seeded random weights, for trying the plumbing; an encoder preset
    (uni, virchow2, …) comes with its publisher's weights, read offline."""
    from slidemill.workers import init_bundle

    name, tiling = chosen_encoder(encoder, tile_px, mpp, hub_cache)
    manifest = init_bundle(
        out,
        encoder=name,
        head=head,
        class_names=class_list(classes),
        mpp=tiling.mpp,
        tile_px=tiling.tile_px,
        seed=seed,
        encoder_weights=encoder_weights,
        encoder_file=encoder_file,
        hub_cache=hub_cache,
    )
    source = manifest.encoder_weights_source
    console.print(
        f"wrote {out} ({manifest.encoder} + {manifest.head}, {manifest.feature_dim}-d"
        + (f"; encoder weights {source})" if source else ")"),
        highlight=False,
        soft_wrap=True,
    )


def model_import_clam(
    checkpoint: Annotated[Path, typer.Argument(help="CLAM state dict saved with torch.save.")],
    clam_type: Annotated[str, typer.Option("--type", help="clam_sb or clam_mb.")],
    size: Annotated[str, typer.Option(help="CLAM model size: small or big.")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names, in CLAM's order.")],
    out: Annotated[Path, typer.Option(help="New bundle folder.")],
    encoder: Annotated[
        str, typer.Option(help="Registered encoder the CLAM features came from.")
    ] = "resnet50_trunc",
    encoder_weights: Annotated[
        Path | None,
        typer.Option(help="Local state dict for the encoder (else it is randomly initialised)."),
    ] = None,
    mpp: Annotated[float, typer.Option(help="µm/px the model works at.")] = 0.5,
    tile_px: Annotated[int, typer.Option(help="Tile edge in pixels.")] = 224,
) -> None:
    """Write a bundle from a CLAM (mahmoodlab/CLAM) checkpoint of a gated CLAM-SB or -MB model."""

    from slidemill.workers.models import ClamSize, ClamType, import_clam_checkpoint

    manifest = import_clam_checkpoint(
        checkpoint,
        out,
        clam_type=cast(ClamType, clam_type),  # the library refuses other values
        size=cast(ClamSize, size),
        class_names=class_list(classes),
        encoder=encoder,
        encoder_weights=encoder_weights,
        input_mpp=mpp,
        tile_px=tile_px,
    )
    weights = encoder_weights.name if encoder_weights else "random, give --encoder-weights"
    console.print(
        f"wrote {out} ({manifest.encoder} + {manifest.head}, {manifest.feature_dim}-d; "
        f"encoder weights: {weights})",
        highlight=False,
        soft_wrap=True,
    )


def model_pretrain(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files or folders (no labels needed).")
    ],
    out: Annotated[Path, typer.Option(help="New folder for the encoder weights and report.")],
    encoder: Annotated[str, typer.Option(help="Registered encoder to train from scratch.")] = (
        "histo_cnn"
    ),
    tile_mpp: Annotated[
        float, typer.Option(help="µm/px of the tiles (give features the same).")
    ] = 1.0,
    tile_px: Annotated[int, typer.Option(help="Tile edge in pixels.")] = 112,
    tiles_per_slide: Annotated[int, typer.Option(min=1, help="Tiles sampled per slide.")] = 256,
    max_tiles: Annotated[
        int, typer.Option(min=2, help="Cap on all tiles (held in memory); fewer per slide beyond.")
    ] = 50_000,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 400,
    batch_size: Annotated[int, typer.Option(min=2, help="Tiles per step (two views each).")] = 128,
    mpp: FallbackMpp = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train an encoder self-supervised (SimCLR with stain jitter) on tiles of your own slides,
    for `slidemill features --encoder-weights OUT/encoder.safetensors`."""
    from slidemill.pipeline.cohort import WEIGHTS_FILE, pretrain, progress_bar
    from slidemill.workers import PretrainConfig

    config = PretrainConfig(steps=steps, batch_size=batch_size, seed=seed)
    with progress_bar(console, steps) as progress:
        sample, report = pretrain(
            slides, out, encoder=encoder, tile_mpp=tile_mpp, tile_px=tile_px,
            tiles_per_slide=tiles_per_slide, max_tiles=max_tiles, config=config,
            fallback_mpp=mpp,
            progress=progress,
        )  # fmt: skip
    for _, reason in sample.left_out:
        console.print(f"[yellow]left out[/yellow] {reason}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {out}: {encoder} on {report.n_tiles} tiles of {len(sample.used)} slide(s), "
        f"loss {report.losses[0]:.3f} → {report.losses[-1]:.3f} in {report.seconds:.0f} s on "
        f"{report.device}\nnext: slidemill features SLIDES --out FEATURES --encoder {encoder} "
        f"--encoder-weights {out / WEIGHTS_FILE} --tile-mpp {tile_mpp} --tile-px {tile_px}",
        highlight=False,
        soft_wrap=True,
    )
