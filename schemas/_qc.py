"""When not to trust a diagnosis: slide QC, distribution shift and calibration contracts.

`SlideQC` is what `result.json` carries under `qc`; `FeatureReference` and `Calibration` are
what a trained bundle's manifest records (format version 2) so that a run can say how far a
slide lies from the training slides and give calibrated probabilities.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field, field_validator

from slidemill.schemas._base import Frozen


class QCMode(StrEnum):
    """What a run does with slide QC (`--qc`)."""

    FLAG = "flag"
    """Measure and flag; every tile still goes to the MIL head (the default)."""
    EXCLUDE = "exclude"
    """Measure and flag, and leave tiles that fail QC out of the MIL head."""
    OFF = "off"
    """No QC and no flags (`result.json` has no `qc`)."""


class FlagCode(StrEnum):
    """Why a person should look at a slide before trusting its diagnosis."""

    OUT_OF_DISTRIBUTION = "out_of_distribution"
    """The slide's tile features lie beyond the model's training slides (its reference)."""
    BLUR = "blur"
    """A large share of the tissue tiles is out of focus."""
    PEN_MARKS = "pen_marks"
    """Ink (blue, green or black strokes) covers part of the tissue."""
    NOT_BRIGHTFIELD = "not_brightfield"
    """The slide does not look like a brightfield H&E slide (dark background, stain off)."""
    TOO_FEW_TILES = "too_few_tiles"
    """Too few tiles pass QC for the diagnosis to rest on."""


class Flag(Frozen):
    """One reason not to trust a diagnosis without a look."""

    code: FlagCode = Field(description="Short code, as in `results.csv`'s `flags` column.")
    reason: str = Field(description="One line: the measurement and the limit it crossed.")

    @field_validator("reason")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if not value or "\n" in value:
            raise ValueError("a flag's reason is one non-empty line")
        return value


Fraction = Annotated[float, Field(ge=0, le=1)]


class SlideQC(Frozen):
    """Slide QC, distribution shift and calibration of one slide: `result.json`'s `qc`."""

    mode: Literal["flag", "exclude"] = Field(description="The run's --qc.")
    tissue_area_mm2: float = Field(ge=0, description="Tissue area on the 8 µm/px thumbnail.")
    background_luminance: Fraction = Field(
        description="Median luminance (0 black, 1 white) of the thumbnail off tissue: ~0.95 for "
        "brightfield glass, near 0 for fluorescence."
    )
    tissue_od: float = Field(ge=0, description="Mean optical density of tissue pixels.")
    stain_residual: Fraction = Field(
        description="Share of the tissue's mean optical density outside the plane of the "
        "haematoxylin and eosin vectors: small for H&E, large for other stains."
    )
    pen_fraction: Fraction = Field(description="Share of the tissue mask that is ink.")
    n_tiles: int = Field(ge=0, description="Tiles the slide was cut into.")
    blurry_fraction: Fraction = Field(description="Share of tiles out of focus.")
    background_fraction: Fraction = Field(description="Mean share of tile pixels that is glass.")
    n_usable: int = Field(ge=0, description="Tiles passing QC (in focus, no ink).")
    excluded_tiles: int = Field(ge=0, description="Tiles left out of the MIL head (--qc exclude).")
    ood_score: float | None = Field(
        default=None, description="Distribution-shift score against the bundle's reference."
    )
    ood_threshold: float | None = Field(
        default=None, description="The score above which the slide is flagged."
    )
    reference: str = Field(
        description="The bundle's training reference (its format), or 'no reference' for a "
        "bundle without one (a fresh `model init`, a CLAM import): then no OOD score."
    )
    temperature: float | None = Field(
        default=None,
        description="Temperature the probabilities were divided by (as logits); None: the "
        "bundle has no calibration and the probabilities are the model's own.",
    )
    flags: tuple[Flag, ...] = Field(default=(), description="Empty when nothing calls for a look.")

    @property
    def codes(self) -> tuple[str, ...]:
        """The flags' codes, in order."""
        return tuple(f.code.value for f in self.flags)


REFERENCE_FORMAT: Final = "slidemill-feature-reference/1"
"""Tile-feature mean and shrunk inverse covariance (`reference.safetensors`), a slide scored by
its tiles' median Mahalanobis distance per √dimension."""


class FeatureReference(Frozen):
    """A bundle's reference of its training features (the file `reference.safetensors`)."""

    format: Literal["slidemill-feature-reference/1"] = REFERENCE_FORMAT
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the reference file.")
    n_slides: int = Field(ge=1, description="Training slides the reference was fitted on.")
    n_tiles: int = Field(ge=1, description="Their tiles.")
    shrinkage: float = Field(ge=0, le=1, description="Covariance shrinkage toward its trace.")
    threshold: float = Field(gt=0, description="OOD score above which a slide is flagged.")
    threshold_rule: str = Field(
        description="How the threshold was chosen, e.g. the 99th percentile of the held-out "
        "slides' scores over the training folds."
    )


class Calibration(Frozen):
    """Temperature scaling fitted on the out-of-fold predictions of `slidemill train`."""

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0, description="Logits are divided by this.")
    n_slides: int = Field(ge=1, description="Out-of-fold predictions it was fitted on.")
    nll_before: float = Field(ge=0, description="Their mean negative log-likelihood before.")
    nll_after: float = Field(ge=0, description="And after.")
