"""What a slide's tasks pass between them: the job a worker is given, the plan it makes, the
refusal of a slide it cannot take, and the result file it publishes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter

from slidemill.pipeline.errors import NoTissueError, one_line
from slidemill.pipeline.graph._resume import ResumeKey
from slidemill.pipeline.graph._store import (
    work_dir,
)
from slidemill.pipeline.slides import (
    JpegTiles,
    LevelChoice,
)
from slidemill.schemas import (
    Provenance,
    QCMode,
    SlideResult,
    TilingSpec,
    slidemill_version,
)
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import RESULT_JSON, SLIDE_STORE
from slidemill.workers import (
    DecodeRequest,
    Quantize,
)


@dataclass(frozen=True, slots=True)
class SlideJob:
    """Everything a worker needs to process one slide."""

    slide_id: str
    """Unique within the batch; names the output folder."""
    path: str
    """Absolute path of the slide file, as workers see it."""
    out: str
    """Absolute output folder of the batch."""
    tiling: TilingSpec
    """Where and how to cut tiles."""
    fallback_mpp: float | None
    """µm/px to assume when the slide records none."""
    tiles_per_task: int
    """Tiles per tiling/encoding task, and per Zarr chunk."""
    model_bundle: str
    """Path of the model bundle."""
    model_sha256: str
    """The bundle id, checked when a worker loads it."""
    class_names: tuple[str, ...]
    """Slide-level classes."""
    feature_dim: int
    """Encoder output width."""
    batch_size: int | None
    """Tiles per encoder forward pass; None: what fits the worker's memory (`auto_batch_size`)."""
    key: ResumeKey | None = None
    """What the outputs depend on (None when the file could not be examined)."""
    force: bool = False
    """Ignore partial work of an interrupted run."""
    features_only: bool = False
    """Stop after the encoder: no MIL head, no heatmap, no diagnosis."""
    threshold: float | None = None
    """Decision threshold on P(second class) for two classes (from training); None = argmax."""
    keep_jpeg: bool | None = None
    """Keep the slide's own JPEG tiles, undecoded, where tiles are cut from a JPEG-tiled level
    without resizing. None until the batch knows whether GPU workers encode (`keep_jpeg`);
    planned outside a batch, None means the CPU-worker default, keep."""
    keep_tiles: bool = False
    """Leave the tile pixels in the published store (by default they are removed once encoded)."""
    qc: QCMode = QCMode.FLAG
    """Slide QC: flag, exclude failing tiles from the MIL head too, or off."""
    jpeg_decode: DecodeRequest = "auto"
    """Where workers decode kept JPEG tiles (`choose_decode`): by default on a CUDA worker's
    GPU when its torchvision has nvJPEG, else on its host's cores."""
    roots: tuple[str, ...] = ()
    """Folders the slide must lie inside whenever a worker opens it (the lab service's allowed
    roots); empty: anywhere."""
    quantize: Quantize = "none"
    """The encoder's linear layers in int8 on CPU workers (`quantize_encoder`), or float32."""

    @property
    def allowed(self) -> tuple[Path, ...]:
        """`roots` as paths, for `ReaderCache.lease`."""
        return tuple(Path(r) for r in self.roots)

    @property
    def work(self) -> Path:
        """The slide's folder while it is being built."""
        return work_dir(Path(self.out), self.slide_id)

    @property
    def store(self) -> Path:
        return self.work / SLIDE_STORE

    def provenance(
        self,
        *,
        slide_mpp: float | None = None,
        mpp_source: Literal["slide", "fallback"] | None = None,
        level: int | None = None,
    ) -> Provenance:
        """What produces this slide's result: the job's inputs, plus what planning found out
        about the slide (absent when it failed before)."""
        return Provenance(
            slidemill_version=slidemill_version(),
            model_sha256=self.model_sha256,
            tiling=self.tiling,
            slide_mpp=slide_mpp,
            mpp_source=mpp_source,
            fallback_mpp=self.fallback_mpp,
            level=level,
            file_size=self.key.file_size if self.key else None,
            file_mtime_ns=self.key.file_mtime_ns if self.key else None,
            quantize=self.quantize,
        )


@dataclass(frozen=True, slots=True)
class SlidePlan:
    """The outcome of planning: what the rest of the slide's graph needs."""

    job: SlideJob
    """The job planned."""
    n_tiles: int
    """Tiles kept."""
    blocks: tuple[tuple[int, int], ...]
    """[start, stop) tile ranges, one per tiling/encoding task."""
    choice: LevelChoice
    """Pyramid level tiles are read from, and the tile size there."""
    stride_level0: float
    """Tile stride in level-0 pixels."""
    provenance: Provenance
    """What produced the slide's outputs."""
    file_sha256: str
    """sha256 of the slide file."""
    seconds: float
    """Time spent planning."""
    jpeg: JpegTiles | None = None
    """Set when tiles are kept as the slide's stored JPEG streams (`JpegTiles`)."""


PLAN_FILE = "plan.json"
PLAN_JSON: TypeAdapter[SlidePlan] = TypeAdapter(SlidePlan)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A slide the plan task turned down for a known reason (bad file, no tissue, no mpp).

    Returned rather than raised: an expected outcome is not a task failure, so it neither fills
    worker logs with tracebacks nor spends retries."""

    status: Literal["failed", "skipped"]
    """`skipped` for no tissue, `failed` otherwise."""
    error: str
    """One line naming the file."""


def refusal_for(err: BaseException) -> Refusal:
    """The refusal an exception amounts to: no tissue skips the slide, anything else fails it."""
    return Refusal("skipped" if isinstance(err, NoTissueError) else "failed", one_line(err))


def write_result(folder: Path, result: SlideResult) -> None:
    """Write `result.json` into `folder` (temporary name, then rename)."""
    write_atomic(folder / RESULT_JSON, json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
