"""The functions Dask runs on workers after a slide is planned, one per stage: tile, encode,
MIL, reduce. They pass paths, indices and small value objects; slide pixels stay on the workers
and in the Zarr store."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from slidemill.pipeline.export import export_slide, slide_maps
from slidemill.pipeline.graph._heatmap import rasterise, render_png
from slidemill.pipeline.graph._job import PLAN_FILE, SlideJob, SlidePlan, write_result
from slidemill.pipeline.graph._plan import published_here
from slidemill.pipeline.graph._store import (
    clear_progress,
    drop_tiles,
    is_done,
    mark_done,
    publish,
    read_all,
    read_attrs,
    read_block,
    read_tile_pixels,
    read_tile_tensor,
    write_array,
    write_block,
    write_jpeg_block,
)
from slidemill.pipeline.graph._tiling import read_stored_jpeg, read_tiles
from slidemill.pipeline.slides import (
    READERS,
    read_thumbnail,
)
from slidemill.pipeline.tissue import (
    BLUR_LIMIT,
    qc_flags,
    thumbnail_qc,
    tile_qc,
    usable_tiles,
)
from slidemill.schemas import (
    REFERENCE_FORMAT,
    QCMode,
    SlideQC,
    SlideResult,
    SlideStoreAttrs,
    StageTimings,
)
from slidemill.schemas.layout import HEATMAP_PNG, StoreArray
from slidemill.workers import (
    auto_batch_size,
    choose_decode,
    device_decode_available,
    encode_tensor,
    encode_tiles,
    get_model,
    ood_score,
    predict_slide,
)
from slidemill.workers.metrics import apply_temperature

log = logging.getLogger(__name__)


# The PNG's slide image is at most this wide or tall.
PNG_MAX_PX = 1024
# The PNG draws each panel about this many pixels wide (4 inches at 100 dpi, `render_png`): a
# stored thumbnail at least this fine on its longer side needs no read of the slide, and one
# more than twice as fine is thinned first, so matplotlib resamples less.
PNG_PANEL_PX = 400
# Under this many pixels on its longer side (a small crop) the stored thumbnail would be too
# coarse to show, and the slide is read at the PNG's size instead.
PNG_MIN_STORED_PX = 128


def tile_block(plan: SlidePlan, start: int, stop: int) -> float:
    """The tiling task: `write_tiles` unless an interrupted run finished this block already;
    returns seconds."""
    job = plan.job
    if is_done(job.work, f"tile-{start}") or published_here(plan) is not None:
        return 0.0
    t0 = time.perf_counter()
    write_tiles(plan, start, stop)
    seconds = time.perf_counter() - t0
    mark_done(job.work, f"tile-{start}", seconds)
    return seconds


def write_tiles(plan: SlidePlan, start: int, stop: int) -> None:
    """Read tiles [start, stop) from the slide and write them to the store."""
    job = plan.job
    spec = job.tiling
    with READERS.lease(Path(job.path), job.allowed) as reader:
        if plan.jpeg is not None:  # no decoding here: the encoder side decodes
            coords = np.asarray(
                read_block(job.store, StoreArray.COORDS, start, stop), dtype=np.int64
            )
            kept = read_stored_jpeg(reader, plan.jpeg, coords, job.path)
        else:
            grid_index = read_block(job.store, StoreArray.GRID_INDEX, start, stop)
            rows, cols = grid_index[:, 0].astype(np.int64), grid_index[:, 1].astype(np.int64)
            tiles = read_tiles(
                reader, plan.choice, plan.stride_level0, spec.tile_px, spec.stride_px, rows, cols
            )
    if plan.jpeg is not None:
        write_jpeg_block(job.store, plan.jpeg, start, kept)
    else:
        write_block(job.store, StoreArray.TILES, start, tiles)


# Per worker thread: the last block of kept JPEG tiles decoded, whose memory the next reuses.
_decoded = threading.local()


@dataclass(frozen=True, slots=True)
class Encoded:
    """What an encode task did."""

    seconds: float
    """Time spent (0 for a block an interrupted run finished)."""
    decode: Literal["cpu", "nvjpeg"] | None
    """Where its tiles' JPEG was decoded; None for a block done before."""


def encode_block(plan: SlidePlan, start: int, stop: int, _tiled: float) -> Encoded:
    """Encode tiles [start, stop) from the store into features.

    Kept JPEG tiles are decoded where `choose_decode` says: on a CUDA worker with nvJPEG, on
    its GPU straight into the encoder's input; else on this host. `_tiled` is the tiling task's
    result: passing it makes this task wait for that one.
    """
    job = plan.job
    if is_done(job.work, f"encode-{start}") or published_here(plan) is not None:
        return Encoded(0.0, None)
    t0 = time.perf_counter()
    model = get_model(job.model_bundle, job.model_sha256, job.quantize)
    device = model.device
    batch_size = job.batch_size or auto_batch_size(model, job.tiling.tile_px)
    where = choose_decode(
        device.type,
        plan.jpeg is not None,
        device.type == "cuda" and device_decode_available(device.type),
        job.jpeg_decode,
    )
    if where in ("nvjpeg", "torchvision"):
        on_device = read_tile_tensor(job.store, start, stop, job.path, device)
        features = encode_tensor(model, on_device, batch_size)
        # QC reads the pixels on the host: one copy back, uint8
        tiles = on_device.permute(0, 2, 3, 1).cpu().numpy()
    else:
        tiles = read_tile_pixels(job.store, start, stop, job.path, getattr(_decoded, "tiles", None))
        if plan.jpeg is not None:  # this thread's next block decodes into the same memory
            _decoded.tiles = tiles
        features = encode_tiles(model, tiles, batch_size)
    write_block(job.store, StoreArray.FEATURES, start, features)
    # QC here rather than in the tile task: this is where the pixels are decoded in every case
    qc = tile_qc(tiles)
    write_block(job.store, StoreArray.QC_BLUR, start, qc.blur)
    write_block(job.store, StoreArray.QC_PEN, start, qc.pen)
    write_block(job.store, StoreArray.QC_BACKGROUND, start, qc.background)
    seconds = time.perf_counter() - t0
    mark_done(job.work, f"encode-{start}", seconds)
    return Encoded(seconds, "nvjpeg" if where == "nvjpeg" else "cpu")


def decoded_on(encoded: list[Encoded]) -> Literal["cpu", "nvjpeg", "mixed"] | None:
    """Where a slide's tiles were decoded, from its encode tasks (pure): one place, `mixed`,
    or None when every block was done by an earlier run."""
    places = {e.decode for e in encoded if e.decode is not None}
    if not places:
        return None
    return places.pop() if len(places) == 1 else "mixed"


@dataclass(frozen=True, slots=True)
class MILResult:
    """The slide-level outcome of the MIL head."""

    probabilities: tuple[float, ...]
    """Slide class probabilities (calibrated when the bundle has a temperature)."""
    seconds: float
    """Time spent."""
    raw_probabilities: tuple[float, ...] = ()
    """The head's own probabilities, which the bundle's threshold was chosen on."""
    ood_score: float | None = None
    """Distribution-shift score against the bundle's reference; None without one."""
    excluded: int = 0
    """Tiles left out of the head (--qc exclude)."""
    ood_threshold: float | None = None
    """The bundle's OOD flag threshold."""
    temperature: float | None = None
    """The bundle's calibration temperature."""


def mil_slide(plan: SlidePlan, _encoded: list[Encoded]) -> MILResult:
    """Run the MIL head over the slide's features (with --qc exclude, those of tiles passing
    QC, unless none does); writes attention (0 for tiles left out) and every tile's scores, and
    scores the features against the bundle's reference."""
    published = published_here(plan)
    if published is not None:
        return MILResult(probabilities=published.probabilities, seconds=0.0)
    t0 = time.perf_counter()
    job = plan.job
    model = get_model(job.model_bundle, job.model_sha256, job.quantize)  # the one encode loaded
    features = read_all(job.store, StoreArray.FEATURES).astype(np.float32, copy=False)
    keep = np.ones(features.shape[0], dtype=bool)
    if job.qc is QCMode.EXCLUDE:
        usable = usable_tiles(
            read_all(job.store, StoreArray.QC_BLUR).astype(np.float32, copy=False),
            read_all(job.store, StoreArray.QC_PEN).astype(np.float32, copy=False),
        )
        if usable.any():
            keep = usable
    pred = predict_slide(model, features[keep])
    attention = np.zeros(features.shape[0], dtype=np.float32)
    attention[keep] = pred.attention
    # tiles left out are still scored (heatmap and exports keep one value per tile); the
    # slide's probabilities and attention come from the tiles kept
    scores = pred.tile_scores if keep.all() else predict_slide(model, features).tile_scores
    write_block(job.store, StoreArray.ATTENTION, 0, attention)
    write_block(job.store, StoreArray.SCORES, 0, scores)
    calibration = model.manifest.calibration
    probabilities = (
        apply_temperature(pred.probabilities, calibration.temperature)
        if calibration is not None
        else pred.probabilities
    )
    ood = (
        ood_score(model.reference, features)
        if model.reference is not None and job.qc is not QCMode.OFF
        else None
    )
    return MILResult(
        probabilities=tuple(float(p) for p in probabilities),
        seconds=time.perf_counter() - t0,
        raw_probabilities=tuple(float(p) for p in pred.probabilities),
        ood_score=ood,
        excluded=int((~keep).sum()),
        ood_threshold=model.manifest.reference.threshold if model.manifest.reference else None,
        temperature=calibration.temperature if calibration is not None else None,
    )


def slide_qc(
    plan: SlidePlan, mil: MILResult, attrs: SlideStoreAttrs, thumb: NDArray[np.uint8]
) -> SlideQC | None:
    """The slide's QC from what its tasks stored (thumbnail, mask, per-tile QC; the store's
    attributes and thumbnail as the caller read them) and the MIL task's OOD score; None with
    --qc off."""
    job = plan.job
    if job.qc is QCMode.OFF:
        return None
    mask = read_all(job.store, StoreArray.TISSUE_MASK).astype(bool)
    width = attrs.slide_dimensions[0]
    thumb_mpp = (plan.provenance.slide_mpp or 1.0) * width / thumb.shape[1]
    measured = thumbnail_qc(thumb, mask, thumb_mpp)
    blur = read_all(job.store, StoreArray.QC_BLUR).astype(np.float32, copy=False)
    pen = read_all(job.store, StoreArray.QC_PEN).astype(np.float32, copy=False)
    background = read_all(job.store, StoreArray.QC_BACKGROUND).astype(np.float32, copy=False)
    flags = qc_flags(measured, blur, pen, mil.ood_score, mil.ood_threshold)
    return SlideQC(
        mode="exclude" if job.qc is QCMode.EXCLUDE else "flag",
        tissue_area_mm2=measured.tissue_area_mm2,
        background_luminance=measured.background_luminance,
        tissue_od=measured.tissue_od,
        stain_residual=measured.stain_residual,
        pen_fraction=measured.pen_fraction,
        n_tiles=int(blur.shape[0]),
        blurry_fraction=float(np.mean(blur < BLUR_LIMIT)) if blur.size else 0.0,
        background_fraction=float(np.mean(background)) if background.size else 0.0,
        n_usable=int(usable_tiles(blur, pen).sum()),
        excluded_tiles=mil.excluded,
        ood_score=mil.ood_score,
        ood_threshold=mil.ood_threshold,
        reference=REFERENCE_FORMAT if mil.ood_threshold is not None else "no reference",
        temperature=mil.temperature,
        flags=flags,
    )


def reduce_slide(
    plan: SlidePlan, mil: MILResult, tiled: list[float], encoded: list[Encoded]
) -> SlideResult:
    """Write the heatmap, its PNG and result.json, then publish the slide's folder."""
    published = published_here(plan)
    if published is not None:
        return published
    t0 = time.perf_counter()
    job = plan.job
    attrs = read_attrs(job.store)
    scores = read_all(job.store, StoreArray.SCORES).astype(np.float32, copy=False)
    grid_index = read_all(job.store, StoreArray.GRID_INDEX)
    heat = rasterise(
        scores,
        grid_index[:, 0].astype(np.int64),
        grid_index[:, 1].astype(np.int64),
        attrs.grid_shape,
    )
    write_array(job.store, StoreArray.HEATMAP, heat)
    stored_thumb = read_all(job.store, StoreArray.THUMBNAIL).astype(np.uint8, copy=False)
    thumb = png_thumbnail(
        stored_thumb,
        Path(job.path),
        attrs.slide_dimensions,
        plan.provenance.slide_mpp or 1.0,
        job.allowed,
    )
    # the threshold was chosen on the head's own probabilities
    label_index = decide_label(mil.raw_probabilities or mil.probabilities, job.threshold)
    label = job.class_names[label_index]
    work = job.work
    qc = slide_qc(plan, mil, attrs, stored_thumb)
    render_png(
        work / HEATMAP_PNG,
        thumb,
        heat,
        job.class_names,
        cell_px=attrs.stride_level0 * thumb.shape[1] / attrs.slide_dimensions[0],
        title=f"{job.slide_id}: {label} (p={mil.probabilities[label_index]:.2f})",
        flags=tuple(f"{f.code.value}: {f.reason}" for f in qc.flags) if qc else (),
    )
    # the files QuPath and napari open, inside the work folder so they publish with the rest;
    # from the arrays this task already read or made (only the attention, written by the MIL
    # task, is read for them) rather than the whole store read again
    attention = read_all(job.store, StoreArray.ATTENTION).astype(np.float32, copy=False)
    maps = slide_maps(job.store, attrs, heat, grid_index.astype(np.int64), scores, attention)
    export_slide(work, threshold=job.threshold, maps=maps)
    result = SlideResult(
        slide_id=job.slide_id,
        path=job.path,
        file_sha256=plan.file_sha256,
        status="done",
        class_names=job.class_names,
        probabilities=mil.probabilities,
        label=label,
        n_tiles=plan.n_tiles,
        timings=StageTimings(
            plan=plan.seconds,
            tile=sum(tiled),
            encode=sum(e.seconds for e in encoded),
            mil=mil.seconds,
            reduce=time.perf_counter() - t0,
        ),
        provenance=plan.provenance.model_copy(update={"decode": decoded_on(encoded)}),
        qc=qc,
    )
    _publish(job, result)
    return result


def png_thumbnail(
    stored: NDArray[np.uint8],
    path: Path,
    dimensions: tuple[int, int],
    base_mpp: float,
    roots: tuple[Path, ...] = (),
) -> NDArray[np.uint8]:
    """The slide image under the PNG's heatmap: the thumbnail the plan stored (no read of the
    slide), thinned to about twice the PNG's panel; a small crop's too-coarse thumbnail is read
    from the slide again at the PNG's size."""
    longer = max(stored.shape[:2])
    if longer >= PNG_MIN_STORED_PX:
        step = max(1, longer // (2 * PNG_PANEL_PX))
        return stored[::step, ::step]
    width, height = dimensions
    display_mpp = base_mpp * max(1.0, max(width, height) / PNG_MAX_PX)
    with READERS.lease(path, roots) as reader:
        return read_thumbnail(reader, base_mpp, display_mpp)


def finish_features(plan: SlidePlan, tiled: list[float], encoded: list[Encoded]) -> SlideResult:
    """The last task of a features-only run: result.json (done, no diagnosis), then publish."""
    published = published_here(plan)
    if published is not None:
        return published
    job = plan.job
    result = SlideResult(
        slide_id=job.slide_id,
        path=job.path,
        file_sha256=plan.file_sha256,
        status="done",
        n_tiles=plan.n_tiles,
        timings=StageTimings(
            plan=plan.seconds, tile=sum(tiled), encode=sum(e.seconds for e in encoded)
        ),
        provenance=plan.provenance.model_copy(update={"decode": decoded_on(encoded)}),
    )
    _publish(job, result)
    return result


def _publish(job: SlideJob, result: SlideResult) -> None:
    if not job.keep_tiles:
        drop_tiles(job.store)
    write_result(job.work, result)
    clear_progress(job.work)
    (job.work / PLAN_FILE).unlink(missing_ok=True)
    publish(Path(job.out), job.slide_id)


def decide_label(probabilities: tuple[float, ...], threshold: float | None) -> int:
    """Class index of the diagnosis: the trained threshold on P(second class) for two classes,
    else the most probable class."""
    if threshold is not None and len(probabilities) == 2:
        return int(probabilities[1] >= threshold)
    return int(np.argmax(probabilities))
