"""Options shared by several commands, as `Annotated` types, and small parsers of option values."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slidemill.schemas import InvalidInputError


def parse_size(text: str, option: str) -> tuple[int, int]:
    """`--size 6000x4000` → (6000, 4000); anything else is a usage error naming the option."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise InvalidInputError(f"{option} {text!r} is not WIDTHxHEIGHT in pixels, e.g. 6000x4000")
    return int(parts[0]), int(parts[1])


def class_list(classes: str) -> tuple[str, ...]:
    """`--classes a,b,c` → ("a", "b", "c")."""
    return tuple(c.strip() for c in classes.split(",") if c.strip())


# Options shared by the commands that run the graph (`run`, `features`).
ClusterFile = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        help="Cluster config (YAML/TOML): local, existing, slurm, kubernetes or cuda. "
        "Default: $SLIDEMILL_CLUSTER_FILE, else the embedded LocalCluster.",
    ),
]
Scheduler = Annotated[
    str | None, typer.Option(help="tcp://HOST:PORT of an existing Dask scheduler.")
]
Workers = Annotated[
    int | None, typer.Option(min=1, help="Embedded cluster: worker processes (default: cores).")
]
FallbackMpp = Annotated[
    float | None,
    typer.Option(help="µm/px to assume for slides that do not record their resolution."),
]
Overlap = Annotated[int, typer.Option(min=0, help="Tile overlap in pixels.")]
MinTissue = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Minimum tissue fraction of a kept tile.")
]
TilesPerTask = Annotated[int, typer.Option(min=1, help="Tiles per Dask task.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Tiles per encoder batch.")]
Retries = Annotated[int, typer.Option(min=0, max=10, help="Extra attempts of a failed task.")]
Force = Annotated[
    bool, typer.Option(help="Redo every slide, even those already done with the same inputs.")
]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
WorkerTimeout = Annotated[
    float,
    typer.Option(
        "--worker-timeout",
        min=0.001,
        help="Seconds to wait while the cluster has no workers at all (preempted nodes, jobs at "
        "their time limit) before every unfinished slide fails.",
    ),
]
KeepTiles = Annotated[
    bool,
    typer.Option(
        help="Leave the tile pixels in each slide.zarr (by default they are removed once "
        "encoded; coordinates, features and scores stay)."
    ),
]
KeepJpeg = Annotated[
    bool | None,
    typer.Option(
        "--keep-jpeg/--decode-tiles",
        help="Where tiles are cut from a level stored as JPEG tiles without resizing, keep "
        "those stored tiles undecoded in the store (the encode task decodes them, on a CUDA "
        "worker's GPU with nvJPEG); --decode-tiles stores RGB. Default: keep.",
        show_default=False,
    ),
]
# Options of the commands that build an encoder (`features`, `model init`).
EncoderName = Annotated[
    str,
    typer.Option(
        help="Registered encoder (resnet18, resnet50_trunc, histo_cnn, handcrafted: H&E "
        "features with no training, …), timm:<name> for any timm model, torchscript with "
        "--encoder-file, or A+B for the features of both side by side (e.g. "
        "histo_cnn+handcrafted)."
    ),
]
EncoderFile = Annotated[
    Path | None,
    typer.Option(help="TorchScript file (torch.jit.save) for --encoder torchscript."),
]
