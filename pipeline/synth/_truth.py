"""The ground truth beside a benchmark slide: `<stem>.mask.png`, its lesion mask, and
`<stem>.truth.json`, enough to rebuild the slide (`load_truth`) and to score against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slidemill.pipeline.synth._scene import Band, Scene
from slidemill.pipeline.synth._shapes import Blob, Ellipse
from slidemill.pipeline.synth._slide import MASK_MPP, SyntheticSlide
from slidemill.schemas.errors import InvalidInputError

TRUTH_FORMAT = "slidemill-synth-truth/1"


def _blob_json(blob: Blob, mpp: float) -> dict[str, Any]:
    x0, y0, x1, y1 = blob.bbox()
    return {
        "cx": blob.cx,
        "cy": blob.cy,
        "radius": blob.radius,
        "harmonics": [list(h) for h in blob.harmonics],
        "diameter_um": 2 * blob.radius * mpp,
        "max_diameter_um": 2 * blob.max_radius * mpp,
        "area_um2": blob.area() * mpp * mpp,
        "bbox": [x0, y0, x1, y1],
    }


def truth_json(
    slide: SyntheticSlide, slide_id: str, mask_file: str, mask_mpp: float
) -> dict[str, Any]:
    """The JSON sidecar of a slide: enough to rebuild it (`load_truth`) and to score against."""
    rows, cols = slide.mask_shape(mask_mpp)
    mpp = slide.texture_mpp
    doc = {
        "format": TRUTH_FORMAT,
        "slide_id": slide_id,
        "label": slide.label,
        "width": slide.width,
        "height": slide.height,
        "mpp": slide.mpp,
        "seed": slide.seed,
        "stain": {"eosin": list(slide.stain[0]), "haematoxylin": list(slide.stain[1])},
        "coordinates": "level-0 pixels",
        "mask": {
            "file": mask_file,
            "mpp": mask_mpp,
            "downsample": mask_mpp / mpp,
            "width": cols,
            "height": rows,
            "rule": "pixel (i, j) is 255 when level-0 point ((j + 0.5) * downsample, "
            "(i + 0.5) * downsample) lies in a lesion",
        },
        "lesion_area_fraction_of_tissue": _lesion_share(slide),
        "lesions": [_blob_json(b, mpp) for b in slide.lesions],
        "mimics": [_blob_json(b, mpp) for b in slide.mimics],
        "tissue": [{"cx": e.cx, "cy": e.cy, "rx": e.rx, "ry": e.ry} for e in slide.tissue],
        "texture": slide.texture,
    }
    if slide.scene is not None:  # a lesion family's slide; the other benchmarks' stay as they were
        doc["scene"] = _scene_json(slide.scene, mpp)
    return doc


def _scene_json(scene: Scene, mpp: float) -> dict[str, Any]:
    return {
        "family": scene.family,
        "variants": list(scene.variants),
        "mimic_variants": list(scene.mimic_variants),
        "crowds": [_blob_json(b, mpp) for b in scene.crowds],
        "lymphoid": [_blob_json(b, mpp) for b in scene.lymphoid],
        "folds": [
            {"x0": f.x0, "y0": f.y0, "x1": f.x1, "y1": f.y1, "half_width": f.half_width}
            for f in scene.folds
        ],
        "stain_scale": list(scene.stain_scale),
        "white": list(scene.white),
        "blur_um": scene.blur_um,
        "jpeg_quality": scene.jpeg_quality,
        "site": scene.site,
        "scanner": "blur and JPEG quality are applied to the written level 0 only; "
        "the rebuilt slide renders the tissue before the scanner",
    }


def _lesion_share(slide: SyntheticSlide) -> float:
    tissue = slide.tissue_fraction()
    if tissue == 0:
        return 0.0
    return sum(b.area() for b in slide.lesions) / (tissue * slide.width * slide.height)


def truth_beside(slide_path: Path) -> SyntheticSlide | None:
    """The slide described by the `<stem>.truth.json` beside `slide_path`, or None when there is
    none; its `lesion_fraction` scores tiles of that slide."""
    sidecar = slide_path.with_name(f"{slide_path.stem}.truth.json")
    return load_truth(sidecar) if sidecar.is_file() else None


def load_truth(path: Path) -> SyntheticSlide:
    """Rebuild the `SyntheticSlide` a truth sidecar describes (pixels and lesions identical)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != TRUTH_FORMAT:
        raise InvalidInputError(f"{path}: not a {TRUTH_FORMAT} file")

    def blobs(key: str, where: dict[str, Any] = doc) -> tuple[Blob, ...]:
        return tuple(
            Blob(b["cx"], b["cy"], b["radius"], tuple((a, p) for a, p in b["harmonics"]))
            for b in where[key]
        )

    scene = None
    if "scene" in doc:
        sc = doc["scene"]
        s, w = sc["stain_scale"], sc["white"]
        scene = Scene(
            sc["family"],
            tuple(sc["variants"]),
            tuple(sc["mimic_variants"]),
            blobs("crowds", sc),
            blobs("lymphoid", sc),
            tuple(Band(f["x0"], f["y0"], f["x1"], f["y1"], f["half_width"]) for f in sc["folds"]),
            (s[0], s[1], s[2]),
            (w[0], w[1], w[2]),
            sc["blur_um"],
            sc["jpeg_quality"],
            sc.get("site"),
        )

    e, h = doc["stain"]["eosin"], doc["stain"]["haematoxylin"]
    return SyntheticSlide(
        doc["width"],
        doc["height"],
        doc["mpp"],
        tuple(Ellipse(t["cx"], t["cy"], t["rx"], t["ry"]) for t in doc["tissue"]),
        seed=doc["seed"],
        stain=((e[0], e[1], e[2]), (h[0], h[1], h[2])),
        lesions=blobs("lesions"),
        mimics=blobs("mimics"),
        texture=doc.get("texture"),
        scene=scene,
    )


def write_truth(
    slide: SyntheticSlide, slide_path: Path, mask_mpp: float = MASK_MPP
) -> tuple[Path, Path]:
    """`<stem>.mask.png` (lesion mask at `mask_mpp` µm/px) and `<stem>.truth.json` beside
    `slide_path`."""
    stem = slide_path.stem
    mask_path = slide_path.with_name(f"{stem}.mask.png")
    truth_path = slide_path.with_name(f"{stem}.truth.json")
    mask = slide.lesion_mask(mask_mpp)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    doc = truth_json(slide, stem, mask_path.name, mask_mpp)
    truth_path.write_text(json.dumps(doc, indent=1) + "\n")
    return mask_path, truth_path
