"""`slidemill model pretrain`: train an encoder self-supervised on tiles sampled from a lab's own
slides; then `slidemill features --encoder NAME --encoder-weights OUT/encoder.safetensors`.

Tiles come from the same tissue detection and grid as a run (`plan_layout`), a seeded uniform
sample of at most `tiles_per_slide` per slide, at the resolution and size the features will use.
No labels are read. A slide that cannot be read is reported and left out; the rest still train.

Output folder (written under a temporary name, renamed when complete):

    encoder.safetensors   the encoder's state dict (with its feature standardisation)
    pretrain.json         encoder, tiling, configuration, slides used and left out, losses
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import save_file

from slidemill.pipeline.errors import InvalidInputError, SlideError, one_line
from slidemill.pipeline.graph import plan_layout, read_tiles
from slidemill.pipeline.slides import READERS, expand
from slidemill.schemas import Normalisation, TilingSpec, slidemill_version
from slidemill.schemas.files import staged_dir
from slidemill.workers import (
    ENCODERS,
    PretrainConfig,
    PretrainReport,
    file_sha256,
    pretrain_encoder,
)

WEIGHTS_FILE = "encoder.safetensors"
REPORT_FILE = "pretrain.json"


@dataclass(frozen=True, slots=True)
class TileSample:
    """Tiles sampled from a batch of slides."""

    tiles: NDArray[np.uint8]
    """(N, tile_px, tile_px, 3) RGB."""
    used: tuple[tuple[str, int], ...]
    """(slide path, tiles taken) per slide that gave tiles."""
    left_out: tuple[tuple[str, str], ...]
    """(slide path, one-line reason) per slide that gave none."""


MAX_TILES = 50_000
"""Default cap on tiles held in memory for pretraining (1.9 GB at 112 px, 7.5 GB at 224 px)."""


def sample_tiles(
    slides: Sequence[Path],
    spec: TilingSpec,
    tiles_per_slide: int,
    seed: int = 0,
    fallback_mpp: float | None = None,
    max_tiles: int = MAX_TILES,
) -> TileSample:
    """At most `tiles_per_slide` tissue tiles of each slide (files or folders), chosen uniformly
    at random (seeded per slide position) from the run's tile grid; fewer per slide when the
    batch would exceed `max_tiles` in all (the tiles are held in memory)."""
    chunks: list[NDArray[np.uint8]] = []
    used: list[tuple[str, int]] = []
    left_out: list[tuple[str, str]] = []
    paths = expand(slides)
    tiles_per_slide = max(1, min(tiles_per_slide, max_tiles // max(1, len(paths))))
    for i, path in enumerate(paths):
        try:
            layout = plan_layout(READERS, path, spec, fallback_mpp)
            grid = layout.grid
            rng = np.random.default_rng([seed, i])
            take = np.sort(rng.permutation(grid.n_tiles)[:tiles_per_slide])
            with READERS.lease(path) as reader:
                tiles = read_tiles(
                    reader,
                    layout.choice,
                    layout.stride_level0,
                    spec.tile_px,
                    spec.stride_px,
                    grid.rows[take].astype(np.int64),
                    grid.cols[take].astype(np.int64),
                )
            chunks.append(tiles)
            used.append((str(path), len(take)))
        except SlideError as err:
            left_out.append((str(path), one_line(err)))
        finally:
            READERS.evict(path)
    if not chunks:
        raise InvalidInputError(
            "no tiles to pretrain on: "
            + ("; ".join(reason for _, reason in left_out) or "no slides given")
        )
    return TileSample(np.concatenate(chunks), tuple(used), tuple(left_out))


def pretrain(
    slides: Sequence[Path],
    out: Path,
    *,
    encoder: str = "histo_cnn",
    tile_mpp: float = 1.0,
    tile_px: int = 112,
    tiles_per_slide: int = 256,
    max_tiles: int = MAX_TILES,
    config: PretrainConfig | None = None,
    fallback_mpp: float | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[TileSample, PretrainReport]:
    """Sample tiles, pretrain a seeded fresh `encoder` on them, and write `out`. A joined name
    ("A+B") is refused: pretrain its learned part, then join it in `features`."""
    config = config or PretrainConfig()
    out = out.absolute()
    if len(ENCODERS.split(encoder)) > 1:
        raise InvalidInputError(
            f"--encoder {encoder!r}: pretrain the learned part alone (e.g. --encoder histo_cnn), "
            f"then give `features` the join: --encoder {encoder} --encoder-weights "
            f"{out / WEIGHTS_FILE}"
        )
    if out.exists():
        raise InvalidInputError(f"{out}: exists; choose a new folder for the pretrained encoder")
    spec = TilingSpec(mpp=tile_mpp, tile_px=tile_px)
    sample = sample_tiles(slides, spec, tiles_per_slide, config.seed, fallback_mpp, max_tiles)
    torch.manual_seed(config.seed)
    module = ENCODERS.build(encoder)
    norm = Normalisation()
    report = pretrain_encoder(module, sample.tiles, config, norm, progress)
    with staged_dir(out) as tmp:
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        doc = {
            "slidemill_version": slidemill_version(),
            "encoder": encoder,
            "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
            "tiling": spec.model_dump(mode="json"),
            "normalisation": norm.model_dump(mode="json"),
            "config": asdict(config),
            "n_tiles": report.n_tiles,
            "slides": [{"path": p, "tiles": n} for p, n in sample.used],
            "left_out": [{"path": p, "reason": r} for p, r in sample.left_out],
            "seconds": round(report.seconds, 1),
            "device": report.device,
            "losses": [round(v, 4) for v in report.losses],
        }
        (tmp / REPORT_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    return sample, report


@contextmanager
def progress_bar(console: Console, steps: int) -> Iterator[Callable[[int, float], None]]:
    """A transient bar for `pretrain`'s `progress`: step count, current loss, time left."""
    with Progress(
        TextColumn("pretrain"), BarColumn(), TextColumn("{task.description}"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=steps)

        def update(step: int, loss: float) -> None:
            bar.update(task, completed=step + 1, description=f"loss {loss:.3f}")

        yield update
