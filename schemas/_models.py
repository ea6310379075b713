"""The pydantic models. Field descriptions double as the JSON Schema documentation."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from slidemill.schemas._base import Frozen
from slidemill.schemas._cluster import AnyClusterConfig
from slidemill.schemas._qc import Calibration, FeatureReference, QCMode, SlideQC


class TissueMethod(StrEnum):
    """How tissue is told from background on the low-resolution image."""

    OTSU_SATURATION = "otsu_saturation"
    """Otsu threshold on HSV saturation, then morphological clean-up (robust to white glass)."""
    NONE = "none"
    """Treat the whole slide as tissue (for cytology or pre-cropped images)."""


class TilingSpec(Frozen):
    """Where and how tiles are cut: physical resolution, size, overlap and tissue filter."""

    mpp: Annotated[float, Field(gt=0, le=1000, description="Target microns per pixel of tiles.")]
    tile_px: Annotated[int, Field(ge=16, le=4096, description="Tile edge in pixels at `mpp`.")]
    overlap_px: Annotated[
        int, Field(ge=0, description="Overlap between neighbouring tiles, pixels at `mpp`.")
    ] = 0
    tissue_method: Annotated[
        TissueMethod, Field(description="Tissue detection method on the thumbnail.")
    ] = TissueMethod.OTSU_SATURATION
    min_tissue_fraction: Annotated[
        float,
        Field(ge=0, le=1, description="Keep a tile when at least this fraction of it is tissue."),
    ] = 0.25
    tissue_mpp: Annotated[
        float,
        Field(gt=0, description="Resolution (µm/px) of the image tissue detection runs on."),
    ] = 8.0

    @model_validator(mode="after")
    def _overlap_smaller_than_tile(self) -> TilingSpec:
        if self.overlap_px >= self.tile_px:
            raise ValueError(
                f"overlap_px ({self.overlap_px}) must be smaller than tile_px ({self.tile_px})"
            )
        return self

    @property
    def stride_px(self) -> int:
        """Distance between neighbouring tile origins, pixels at `mpp`."""
        return self.tile_px - self.overlap_px


class Normalisation(Frozen):
    """Per-channel normalisation applied to RGB in [0, 1] before the encoder."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ModelManifest(Frozen):
    """The JSON half of a model bundle; the other half is `weights.safetensors`."""

    format_version: Literal[1, 2] = Field(
        default=1,
        description="1: encoder and head; 2 adds the training reference and the calibration "
        "(`reference`, `calibration`), written by `slidemill train`.",
    )
    encoder: str = Field(
        description="Registered encoder name, e.g. 'resnet18', 'histo_cnn', 'timm:<name>', "
        "a preset such as 'uni', or 'torchscript' (the file in the bundle as "
        "encoder.torchscript.pt)."
    )
    encoder_kwargs: dict[str, int | float | str | bool] = Field(
        default_factory=dict,
        description="Encoder arguments; for 'torchscript', the file's sha256 (file_sha256).",
    )
    encoder_preset: str | None = Field(
        default=None,
        description="The named foundation-model preset (e.g. 'uni') whose published weights "
        "the encoder holds; None when it holds none.",
    )
    encoder_weights_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the file the encoder's weights were read from (a preset's "
        "published file, or a local --encoder-weights file); None for random or trained "
        "weights.",
    )
    encoder_weights_source: str | None = Field(
        default=None,
        description="Where that file was read: its path, or 'hf:<hub id>@<revision>/<file>' "
        "for the Hugging Face cache.",
    )
    feature_dim: int = Field(gt=0, description="Length of one tile's feature vector.")
    head: str = Field(description="Registered MIL head name, e.g. 'abmil_gated'.")
    head_kwargs: dict[str, int | float | str | bool] = Field(default_factory=dict)
    class_names: tuple[str, ...] = Field(min_length=2, description="Slide-level classes, in order.")
    input_mpp: float = Field(gt=0, description="µm/px the model was trained at.")
    tile_px: int = Field(ge=16, description="Tile edge in pixels the model was trained at.")
    normalisation: Normalisation = Normalisation()
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the weights.")
    description: str = ""
    threshold: float | None = Field(
        default=None,
        description="decision threshold on P(positive class), chosen on validation data; "
        "None = argmax",
    )
    reference: FeatureReference | None = Field(
        default=None,
        description="Format 2: the training features' reference (`reference.safetensors`) for "
        "the out-of-distribution score; None: no reference, no score.",
    )
    calibration: Calibration | None = Field(
        default=None,
        description="Format 2: temperature scaling of the slide probabilities; None: the "
        "probabilities are the head's own.",
    )

    @model_validator(mode="after")
    def _versioned(self) -> ModelManifest:
        if self.format_version == 1 and (self.reference or self.calibration):
            raise ValueError("a reference or a calibration needs format_version 2")
        return self


MAX_WORKER_TIMEOUT_S = 7 * 24 * 3600.0
"""A week: longer than any batch system keeps a job queued; a larger wait is a mistake."""


class RunOptions(Frozen):
    """How a batch runs, declared once: `RunSpec` (`slidemill run`), the lab service's
    `BatchRequest` and a schedule's options all take these fields, bounds included, and the
    CLI's options of `run`, `features` and `submit` take their defaults, bounds and help from
    them. A description is one or more full sentences: it is the option's `--help` too."""

    tiles_per_task: int = Field(
        default=256, ge=1, le=65536, description="Tiles read, written and encoded per Dask task."
    )
    fallback_mpp: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="µm/px for slides that do not record their resolution.",
    )
    overlap_px: int = Field(
        default=0,
        ge=0,
        le=4095,
        description="Overlap between neighbouring tiles, pixels at the model's resolution "
        "(less than the model's tile size).",
    )
    min_tissue_fraction: float = Field(
        default=0.25, ge=0, le=1, description="Minimum tissue fraction of a kept tile."
    )
    tissue_method: TissueMethod = Field(
        default=TissueMethod.OTSU_SATURATION,
        description="How tissue is told from background on the thumbnail: 'otsu_saturation' "
        "thresholds its saturation, 'none' takes the whole slide as tissue.",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Tiles per encoder forward pass. Unset: each worker takes the largest batch "
        "whose activations fit its memory (measured on one tile of its encoder), at most 64 on "
        "a CPU and 256 on a GPU.",
    )
    quantize: Literal["none", "int8"] = Field(
        default="none",
        description="'int8' quantises the encoder's linear layers to 8-bit integers on CPU "
        "workers (dynamic quantisation: weights in int8, activations scaled per batch), which "
        "encodes faster with features close to, not equal to, float32's; a GPU worker ignores "
        "it with a warning and keeps its float16/bfloat16 autocast. 'none' keeps float32.",
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Extra attempts of a failed task before its slide fails.",
    )
    force: bool = Field(
        default=False, description="Redo every slide, ignoring earlier results and partial work."
    )
    keep_tiles: bool = Field(
        default=False,
        description="Leave the tile pixels in each published slide.zarr; by default they are "
        "removed once encoded (coordinates, features and scores stay).",
    )
    keep_jpeg: bool | None = Field(
        default=None,
        description="Keep the slide's stored JPEG tiles undecoded in the store where tiles are "
        "cut from a JPEG-tiled level without resizing (the encode task decodes them), or store "
        "them decoded as RGB. Unset: keep them, on CPU and GPU workers alike.",
    )
    jpeg_decode: Literal["auto", "cpu", "device"] = Field(
        default="auto",
        description="Where workers decode kept JPEG tiles: 'auto' on a CUDA worker's GPU when "
        "its torchvision has nvJPEG, else on its host; 'cpu' always on the host; 'device' "
        "always through torchvision on the model's device (on a CPU: torchvision's libjpeg).",
    )
    worker_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=MAX_WORKER_TIMEOUT_S,
        description="Seconds the batch waits while the cluster has no workers at all (after "
        "it had some: preempted nodes, a job that hit its time limit) before every unfinished "
        "slide fails with 'no workers for N s'. A cluster still starting is waited for.",
    )
    qc: QCMode = Field(
        default=QCMode.FLAG,
        description="Slide QC: 'flag' measures and flags, 'exclude' also leaves tiles failing "
        "QC out of the MIL head, 'off' neither.",
    )


class RunSpec(RunOptions):
    """One batch: what to run, with which model, where to write, and on which cluster."""

    slides: tuple[Path, ...] = Field(min_length=1, description="Slide files or folders.")
    model: Path = Field(description="A model bundle folder.")
    out: Path = Field(description="Output folder; one subfolder per slide.")
    scheduler: str | None = Field(
        default=None, description="Address of an existing Dask scheduler; None starts one."
    )
    n_workers: int | None = Field(default=None, ge=1, description="Local workers; None = cores.")
    cluster: AnyClusterConfig | None = Field(
        default=None,
        description="Where to run (a cluster config); None = the scheduler / n_workers "
        "shortcuts, the SLIDEMILL_ environment, or the embedded LocalCluster.",
    )
    stages: Literal["all", "features"] = Field(
        default="all", description="'features' stops after the encoder (no MIL, no heatmap)."
    )


SlideStatus = Literal["done", "failed", "skipped"]


class StageTimings(Frozen):
    """Seconds spent in each stage, summed over the slide's tasks (worker time, not wall)."""

    plan: float = 0.0
    tile: float = 0.0
    encode: float = 0.0
    mil: float = 0.0
    reduce: float = 0.0


class Provenance(Frozen):
    """What produced a result; enough to decide whether it is still valid."""

    slidemill_version: str
    model_sha256: str | None = None
    tiling: TilingSpec | None = None
    slide_mpp: float | None = Field(default=None, description="Level-0 µm/px used for the slide.")
    mpp_source: Literal["slide", "fallback"] | None = None
    fallback_mpp: float | None = Field(default=None, description="The run's --mpp fallback.")
    level: int | None = Field(default=None, description="Pyramid level tiles were read from.")
    file_size: int | None = Field(default=None, description="Slide file size in bytes.")
    file_mtime_ns: int | None = Field(default=None, description="Slide file modification time.")
    quantize: Literal["none", "int8"] = Field(
        default="none",
        description="The run's --quantize: 'int8' when CPU workers encoded with the encoder's "
        "linear layers in int8 (results written before the option existed read as 'none').",
    )
    decode: Literal["cpu", "nvjpeg", "mixed"] | None = Field(
        default=None,
        description="Where the tiles' JPEG was decoded: on the workers' host cores (cpu), on "
        "their GPUs (nvjpeg), some blocks each (mixed); None when unknown (a resumed run).",
    )


class SlideResult(Frozen):
    """The outcome of one slide, written as `<out>/<slide_id>/result.json`."""

    slide_id: str
    path: str
    file_sha256: str | None = None
    status: SlideStatus
    error: str | None = Field(default=None, description="One line naming the file and the cause.")
    class_names: tuple[str, ...] = ()
    probabilities: tuple[float, ...] = ()
    label: str | None = None
    n_tiles: int = 0
    timings: StageTimings = StageTimings()
    provenance: Provenance
    qc: SlideQC | None = Field(
        default=None,
        description="QC measurements, distribution shift and flags (None: --qc off, or no "
        "diagnosis). A flagged slide keeps its label; the flags say why a person should look.",
    )

    @property
    def flag_codes(self) -> tuple[str, ...]:
        """The QC flags' short codes (empty without QC)."""
        return self.qc.codes if self.qc is not None else ()

    @model_validator(mode="after")
    def _consistent(self) -> SlideResult:
        # a features-only run has no classes: done without a diagnosis
        if (
            self.status == "done"
            and self.class_names
            and (self.label is None or not self.probabilities)
        ):
            raise ValueError("a done slide with classes needs a label and probabilities")
        if self.status != "done" and not self.error:
            raise ValueError(f"a {self.status} slide needs an error line")
        if self.error is not None and "\n" in self.error:
            raise ValueError("error must be one line")
        return self


class SlideStoreAttrs(Frozen):
    """Attributes on the root group of `<slide_id>/slide.zarr`."""

    layout_version: Literal[1] = 1
    slide_id: str
    slide_dimensions: tuple[int, int] = Field(description="Level-0 width, height in pixels.")
    tile_size_level0: float = Field(description="Tile edge in level-0 pixels.")
    stride_level0: float = Field(description="Tile stride in level-0 pixels.")
    grid_shape: tuple[int, int] = Field(description="Tile grid rows, columns.")
    class_names: tuple[str, ...] = ()
    provenance: Provenance


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "tiling_spec": TilingSpec,
    "model_manifest": ModelManifest,
    "run_spec": RunSpec,
    "slide_result": SlideResult,
    "slide_store_attrs": SlideStoreAttrs,
}
