"""A labelled benchmark set with ground truth.

`write_benchmark_set` (the `slidemill synth` command) writes a labelled set into one folder:

    synthetic-NNN.svs          0.5 µm/px, levels at 0.5, 2 and 8 µm/px (a lesion family's
                               slides: `<family>-NNN.svs`, as its scanner wrote them;
                               a site's: `<site>-<family>-NNN.svs`)
    synthetic-NNN.mask.png     lesion mask at 8 µm/px (`MASK_MPP`), 255 = lesion; pixel (i, j)
                               covers level-0 [16j, 16j+16) x [16i, 16i+16) and holds the
                               truth at its centre
    synthetic-NNN.truth.json   label, lesions and look-alikes (level-0 px and µm), tissue,
                               stain, seed, the mask's file, resolution and size
                               (`load_truth` rebuilds the slide from it)
    labels.csv                 slide_id,path,label (path relative to the folder;
                               label negative or positive)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slidemill.pipeline.synth._families import plan_family_slide, write_scanned
from slidemill.pipeline.synth._noise import _MASK64
from slidemill.pipeline.synth._plan import plan_benchmark_slide
from slidemill.pipeline.synth._scene import FAMILIES, SiteShift
from slidemill.pipeline.synth._slide import MASK_MPP, SyntheticSlide
from slidemill.pipeline.synth._texture import load_texture
from slidemill.pipeline.synth._tiff import write_slide
from slidemill.pipeline.synth._truth import write_truth
from slidemill.schemas.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class BenchmarkSlide:
    """One slide of a benchmark set and where its files are."""

    slide_id: str
    """The file's stem: what `slidemill run` calls the slide."""
    path: Path
    """The SVS file."""
    label: str
    """The slide's class: positive (it has lesions) or negative."""
    slide: SyntheticSlide
    """What was drawn: tissue, lesions, mimics, stain (for `lesion_fraction` and the like)."""
    mask_path: Path
    """Lesion mask PNG at `MASK_MPP` µm/px (255 = lesion)."""
    truth_path: Path
    """JSON sidecar: label, lesions, mimics, tissue, stain, mask resolution."""


MIN_SIDE = 1024
"""The smallest side of a benchmark slide that leaves room for lesions and look-alikes."""


def write_benchmark_set(
    out: Path,
    n: int = 20,
    positive_fraction: float = 0.5,
    seed: int = 0,
    size: tuple[int, int] = (6000, 4000),
    mpp: float = 0.5,
    downsamples: Sequence[int] = (1, 4, 16),
    mask_mpp: float = MASK_MPP,
    texture: Path | None = None,
    generator: str | None = None,
    site: SiteShift | None = None,
) -> list[BenchmarkSlide]:
    """`n` SVS slides (`synthetic-NNN.svs`), n · `positive_fraction` (rounded half up) of them
    positive in a seeded random order, each with its lesion mask and truth sidecar, and
    `labels.csv` (slide_id, path relative to `out`, label). Deterministic in `seed`. With a
    `texture` slide, the textured benchmark (`plan_benchmark_slide`); with a `generator` of
    `FAMILIES` too, that lesion family's set (`plan_family_slide`, `<family>-NNN.svs`), stained
    and scanned as `site` does when one is given."""
    if generator is not None and generator not in FAMILIES:
        raise InvalidInputError(f"generator {generator!r}: one of {', '.join(FAMILIES)}")
    if generator is not None and texture is None:
        raise InvalidInputError(f"lesion family {generator}: needs a texture slide (--texture)")
    if site is not None and generator is None:
        raise InvalidInputError(
            f"site {site.name!r}: a site shifts a lesion family's stain and scanner; "
            f"give a generator ({', '.join(FAMILIES)})"
        )
    if n < 1:
        raise InvalidInputError("n must be at least 1")
    if not 0.0 <= positive_fraction <= 1.0:
        raise InvalidInputError("positive fraction must lie in [0, 1]")
    if min(size) < MIN_SIDE:
        raise InvalidInputError(
            f"size {size[0]}x{size[1]} is too small for lesions; use at least {MIN_SIDE}x{MIN_SIDE}"
        )
    source = None
    if texture is not None:
        source = str(Path(texture).resolve())
        load_texture(source, mpp)  # a slide without tissue fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([seed & _MASK64, 0x1AB]).permutation(n)
    positive = set(order[: math.floor(n * positive_fraction + 0.5)].tolist())
    written = []
    for i in range(n):
        slide_seed = int(
            np.random.SeedSequence([seed & _MASK64, i]).generate_state(1)[0] & 0x7FFFFFFF
        )
        if generator is not None:
            slide = plan_family_slide(
                slide_seed, i in positive, generator, size[0], size[1], mpp, source
            )
            if site is not None and slide.scene is not None:
                slide = replace(slide, scene=site.apply(slide.scene))
            stem = f"{generator}-{i:03d}" if site is None else f"{site.name}-{generator}-{i:03d}"
            path = write_scanned(out / f"{stem}.svs", slide, downsamples)
        else:
            slide = plan_benchmark_slide(slide_seed, i in positive, size[0], size[1], mpp, source)
            path = write_slide(out / f"synthetic-{i:03d}.svs", slide, downsamples=downsamples)
        mask_path, truth_path = write_truth(slide, path, mask_mpp)
        written.append(BenchmarkSlide(path.stem, path, slide.label, slide, mask_path, truth_path))
    with (out / "labels.csv").open("w", newline="") as f:
        table = csv.writer(f)
        table.writerow(["slide_id", "path", "label"])
        for s in written:
            table.writerow([s.slide_id, s.path.name, s.label])
    return written
