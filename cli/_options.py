"""Options shared by several commands, as `Annotated` types, and small parsers of option values."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from annotated_types import Ge, Gt, Le, Lt

from slidemill.schemas import InvalidInputError, QCMode, RunOptions, TissueMethod


def parse_size(text: str, option: str) -> tuple[int, int]:
    """`--size 6000x4000` → (6000, 4000); anything else is a usage error naming the option."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise InvalidInputError(f"{option} {text!r} is not WIDTHxHEIGHT in pixels, e.g. 6000x4000")
    return int(parts[0]), int(parts[1])


def class_list(classes: str) -> tuple[str, ...]:
    """`--classes a,b,c` → ("a", "b", "c")."""
    return tuple(c.strip() for c in classes.split(",") if c.strip())


# The run's options (`run`, `features`, `submit`), each derived from its `RunOptions` field:
# the flag, its type's bounds and its help are the field's; the default goes on the parameter,
# as typer wants with `Annotated` (`overlap_px: Overlap = RUN_DEFAULTS.overlap_px`). A command
# names its parameters as the fields, so `run_options(locals())` gathers them in one place;
# tests/cli/test_one_declaration.py checks every command against RunOptions.
RUN_DEFAULTS = RunOptions()
"""Every run option at its default."""


def run_option(field: str, flags: str | None = None) -> Any:
    """A `typer.Option` for the RunOptions field `field`: `flags` (default `--field-name`, and
    `--field-name/--no-field-name` for a bool), a number's `ge`/`gt`/`le`/`lt` as its
    `min`/`max`, the field's description as its help."""
    info = RunOptions.model_fields[field]
    bounds: dict[str, Any] = {}
    for limit in info.metadata:
        match limit:
            case Ge(ge=v) | Gt(gt=v):  # typer's bounds are closed: RunOptions refuses `gt` itself
                bounds["min"] = v
            case Le(le=v) | Lt(lt=v):
                bounds["max"] = v
            case _:  # a limit the CLI cannot state would be checked on one surface only
                raise TypeError(f"RunOptions.{field}: no CLI form for {limit!r}")
    if flags is None:
        flag = "--" + field.replace("_", "-")
        flags = f"{flag}/--no-{flag[2:]}" if info.annotation is bool else flag
    return typer.Option(flags, help=info.description, **bounds)


if TYPE_CHECKING:
    JpegDecodeMode = str
    QuantizeMode = str
else:  # the fields' own `Literal`s, whose values typer offers as the choices
    JpegDecodeMode = RunOptions.model_fields["jpeg_decode"].annotation
    QuantizeMode = RunOptions.model_fields["quantize"].annotation


def run_options(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The RunOptions fields among a command's parameters (`locals()` first thing in its body),
    by field name: the one list of them that RunSpec and the service's request are built from."""
    return {name: parameters[name] for name in RunOptions.model_fields}


TilesPerTask = Annotated[int, run_option("tiles_per_task")]
FallbackMpp = Annotated[float | None, run_option("fallback_mpp", "--mpp")]
Overlap = Annotated[int, run_option("overlap_px", "--overlap")]
MinTissue = Annotated[float, run_option("min_tissue_fraction", "--min-tissue")]
Tissue = Annotated[TissueMethod, run_option("tissue_method")]
BatchSize = Annotated[int | None, run_option("batch_size")]
Retries = Annotated[int, run_option("retries")]
Force = Annotated[bool, run_option("force")]
KeepTiles = Annotated[bool, run_option("keep_tiles")]
KeepJpeg = Annotated[bool | None, run_option("keep_jpeg", "--keep-jpeg/--decode-tiles")]
JpegDecode = Annotated[JpegDecodeMode, run_option("jpeg_decode")]
WorkerTimeout = Annotated[float, run_option("worker_timeout_s", "--worker-timeout")]
QC = Annotated[QCMode, run_option("qc")]
Quantize = Annotated[QuantizeMode, run_option("quantize")]

# Options of the commands outside the run's options: where it runs, what it shows, how it exits.
FailOnFlags = Annotated[
    bool,
    typer.Option("--fail-on-flags", help="Exit with status 1 when any slide is flagged by QC."),
]
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
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]

# Options of the commands that build an encoder (`features`, `model init`).
EncoderName = Annotated[
    str | None,
    typer.Option(
        help="Registered encoder: a foundation-model preset (uni, virchow2, h-optimus-0, "
        "phikon, …: `slidemill encoders`), handcrafted (H&E features with no training), "
        "histo_cnn, resnet18, …, timm:<name> for any timm model, torchscript with "
        "--encoder-file, or A+B for the features of both side by side (e.g. "
        "uni+handcrafted). Default: the first preset whose weights are in the Hugging Face "
        "cache, else handcrafted.",
        show_default=False,
    ),
]
HubCache = Annotated[
    Path | None,
    typer.Option(
        help="Hugging Face hub cache a preset's weights are read from (default: $HF_HUB_CACHE, "
        "else $HF_HOME/hub, else ~/.cache/huggingface/hub). Nothing is downloaded.",
        show_default=False,
    ),
]
TilePx = Annotated[
    int | None,
    typer.Option(
        min=16,
        help="Tile edge in pixels (default: the encoder's own: a preset's, 112 for "
        "handcrafted, else 224).",
        show_default=False,
    ),
]
TileMpp = Annotated[
    float | None,
    typer.Option(
        min=0.01,
        help="µm/px of the tiles (default: the encoder's own: a preset's, else 0.5).",
        show_default=False,
    ),
]
EncoderFile = Annotated[
    Path | None,
    typer.Option(help="TorchScript file (torch.jit.save) for --encoder torchscript."),
]
