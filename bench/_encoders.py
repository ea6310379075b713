"""`slidemill bench-encoders`: each encoder preset at full size, with random weights, on this
machine's CPU in float32 and with its linear layers in int8 (`quantize_encoder`, what
`--quantize int8` does on a worker): tiles per second, peak resident memory, and how far int8's
features are from float32's on real tissue tiles of the sample slide; bfloat16 autocast on a GPU
where there is one.

Each preset is measured in a process of its own (spawned, so nothing is inherited), which holds
one preset at a time: one preset's memory never counts in the next one's peak. float32 and int8
rounds alternate, so a machine whose load changes meanwhile slows both alike and their ratio
holds.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import gc
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from rich.console import Console
from rich.table import Column, Table

from slidemill.pipeline.slides import open_slide, read_thumbnail
from slidemill.pipeline.tissue import grid_shape, tile_tissue_fractions, tissue_mask
from slidemill.schemas import TissueMethod
from slidemill.workers.inference import quantize_encoder
from slidemill.workers.models import PRESETS, EncoderPreset, PresetEncoder

LARGE_PARAMS = 500_000_000
"""From this many parameters (ViT-H and ViT-g) a preset is timed on `large_tiles` tiles: a
ViT-g's float32 forward takes seconds per tile on two cores."""
THUMB_MPP = 8.0
"""Resolution of the thumbnail the tissue tiles are chosen on."""
MIN_TISSUE = 0.9
"""Tissue fraction of a tile chosen for the agreement figures."""


@dataclass(frozen=True, slots=True)
class EncoderRow:
    """One preset's figures (or why there are none)."""

    preset: str
    """The preset's name."""
    params: int
    """Parameters of the model as built (at `depth` when reduced)."""
    width: int
    """Length of one tile's embedding."""
    tiles: int
    """Tiles in each timed batch (the agreement figures are over these tiles)."""
    rounds: int
    """Timed rounds of each precision, after one warm-up each."""
    fp32_tiles_s: float = 0.0
    """float32 tiles per second, the median over the rounds."""
    int8_tiles_s: float = 0.0
    """int8 tiles per second, the median over the rounds."""
    speedup: float = 0.0
    """int8 / float32, the median of the rounds' ratios (each round times both)."""
    baseline_mib: float | None = None
    """Resident memory of the preset's process before its model is built (Python, torch and
    the libraries imported); None where it cannot be read."""
    fp32_peak_mib: float | None = None
    """Peak resident memory of the preset's process while float32 encodes one batch (the
    float32 model, one batch, and Python with torch); None where it cannot be read."""
    int8_peak_mib: float | None = None
    """The same for int8, once the float32 weights are freed (what a worker that quantised its
    model holds while it encodes)."""
    cos_min: float = 0.0
    """Least cosine similarity between a tile's int8 and float32 features."""
    cos_median: float = 0.0
    """Median of those similarities."""
    quantised_layers: int = 0
    """Linear layers replaced by int8 ones."""
    layer_scales: int = 0
    """LayerScale tensors set to 1 (`unit_layer_scale`)."""
    bf16_tiles_s: float | None = None
    """bfloat16-autocast tiles per second on a GPU; None: no GPU."""
    depth: int | None = None
    """Blocks built, when fewer than the preset's (tests)."""
    error: str | None = None
    """Why the preset has no figures (its process failed or was killed), one line."""


def tissue_tiles(slide: Path, n: int, tile_px: int, mpp: float) -> NDArray[np.uint8]:
    """`n` tiles (n, tile_px, tile_px, 3) uint8 RGB of mostly tissue (at least `MIN_TISSUE`,
    else the richest), cut from `slide` at `mpp` µm/px, spread over its tissue."""
    reader = open_slide(slide)
    try:
        base_mpp = reader.mpp or mpp
        width, height = reader.dimensions
        thumb = read_thumbnail(reader, base_mpp, THUMB_MPP)
        mask = tissue_mask(thumb, TissueMethod.OTSU_SATURATION, THUMB_MPP)
        size0 = tile_px * mpp / base_mpp  # tile edge in level-0 pixels
        shape = grid_shape(width, height, size0, size0)
        fractions = tile_tissue_fractions(mask, thumb.shape[1] / width, shape, size0, size0)
        order = np.argsort(-fractions, axis=None, kind="stable")
        rich = order[fractions.ravel()[order] >= MIN_TISSUE]
        chosen = rich if len(rich) >= n else order[: max(n, 1)]
        picks = chosen[np.linspace(0, len(chosen) - 1, n).round().astype(int)] if n else chosen[:0]
        side = round(size0)
        tiles = []
        for flat in picks:
            row, col = divmod(int(flat), shape[1])
            region = reader.read_region((round(col * size0), round(row * size0)), 0, (side, side))
            if side != tile_px:
                region = np.asarray(
                    Image.fromarray(region).resize((tile_px, tile_px), Image.Resampling.BILINEAR)
                )
            tiles.append(region)
        return np.stack(tiles) if tiles else np.zeros((0, tile_px, tile_px, 3), np.uint8)
    finally:
        reader.close()


def _normalised(tiles: NDArray[np.uint8], preset: EncoderPreset) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 with the preset's mean and std, as a worker
    feeds them."""
    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def _reset_peak() -> bool:
    """Free what can be freed and restart the kernel's peak-RSS count of this process (Linux's
    /proc/self/clear_refs); False where it cannot."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with Path("/proc/self/clear_refs").open("w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _peak_mib() -> float | None:
    """Peak resident memory of this process since the last `_reset_peak`, MiB."""
    try:
        with Path("/proc/self/status").open() as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def unit_layer_scale(model: torch.nn.Module) -> int:
    """Set every LayerScale factor (timm's `ls1/ls2.gamma`, transformers' `layer_scale1/2.lambda1`)
    to 1; returns how many tensors. With random weights at timm's initial 1e-5 a block adds
    almost nothing to the residual stream, so int8's errors inside the blocks would not show in
    the features; at 1 every block counts, as in a trained model."""
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(
                ("ls1.gamma", "ls2.gamma", "layer_scale1.lambda1", "layer_scale2.lambda1")
            ):
                param.fill_(1.0)
                count += 1
    return count


def _timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def measure_preset(
    name: str, tiles: NDArray[np.uint8], rounds: int, depth: int | None = None
) -> EncoderRow:
    """One preset's figures, in this process (`run_bench_encoders` calls it in a process of its
    own): built with random weights (seed 0) at full size, or `depth` blocks; float32 and int8
    on `tiles`, in alternating rounds."""
    preset = PRESETS[name]
    _reset_peak()
    baseline = _peak_mib()
    torch.manual_seed(0)
    fp32 = PresetEncoder(preset, depth).eval()
    layer_scales = unit_layer_scale(fp32)
    x = _normalised(tiles, preset)
    n = x.shape[0]
    params = sum(p.numel() for p in fp32.parameters())
    with torch.inference_mode():
        resettable = _reset_peak()
        fp32_out = fp32(x)  # the warm-up, and float32's peak
        fp32_peak = _peak_mib() if resettable else None
    # the int8 model shares float32's tensors until its linear layers are replaced: built on the
    # meta device, nothing is allocated twice (a preset cannot be deep-copied)
    with torch.device("meta"):
        int8 = PresetEncoder(preset, depth).eval()
    int8.load_state_dict(fp32.state_dict(), assign=True)
    replaced = quantize_encoder(int8)
    fp32_times, int8_times = [], []
    with torch.inference_mode():
        int8_out = int8(x)  # its warm-up
        for _ in range(rounds):
            fp32_times.append(_timed(functools.partial(fp32, x)))
            int8_times.append(_timed(functools.partial(int8, x)))
    cos = torch.nn.functional.cosine_similarity(int8_out.float(), fp32_out.float(), dim=1)
    bf16 = _bf16_tiles_s(fp32, x, rounds) if torch.cuda.is_available() else None
    del fp32, fp32_out
    with torch.inference_mode():
        resettable = _reset_peak()
        int8(x)
        int8_peak = _peak_mib() if resettable else None
    return EncoderRow(
        preset=name,
        params=params,
        width=preset.width,
        tiles=n,
        rounds=rounds,
        fp32_tiles_s=statistics.median(n / t for t in fp32_times),
        int8_tiles_s=statistics.median(n / t for t in int8_times),
        speedup=statistics.median(f / i for f, i in zip(fp32_times, int8_times, strict=True)),
        baseline_mib=baseline,
        fp32_peak_mib=fp32_peak,
        int8_peak_mib=int8_peak,
        cos_min=float(cos.min()),
        cos_median=float(cos.median()),
        quantised_layers=replaced,
        layer_scales=layer_scales,
        bf16_tiles_s=bf16,
        depth=depth,
    )


def _bf16_tiles_s(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> float:
    """bfloat16-autocast tiles per second on the GPU (a copy of the model moved there)."""
    model.to("cuda")
    xs = x.to("cuda")
    sync = torch.cuda.synchronize
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(xs)
        times = [_timed(lambda: model(xs), sync) for _ in range(rounds)]
    model.to("cpu")
    torch.cuda.empty_cache()
    return statistics.median(x.shape[0] / t for t in times)


def _child(
    conn: Connection, name: str, tiles: NDArray[np.uint8], rounds: int, depth: int | None
) -> None:
    """The child's side of `_in_child`: the row, or the one line its failure amounts to."""
    try:
        conn.send(measure_preset(name, tiles, rounds, depth))
    except Exception as err:  # the preset's own failure, reported in its row
        conn.send(f"{type(err).__name__}: {err}".splitlines()[0])
    finally:
        conn.close()


def _in_child(
    name: str, tiles: NDArray[np.uint8], rounds: int, depth: int | None, shape: EncoderRow
) -> EncoderRow:
    """`measure_preset` in a spawned process of its own; a process that fails or dies (the
    kernel kills it when memory runs out) is `shape` with the reason."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, name, tiles, rounds, depth))
    process.start()
    send.close()  # the child holds the only writing end: its death ends `recv`
    try:
        outcome: EncoderRow | str | None = receive.recv()
    except EOFError:
        outcome = None
    finally:
        receive.close()
        process.join()
    if isinstance(outcome, EncoderRow):
        return outcome
    if outcome is None:
        code = process.exitcode
        outcome = (
            f"its process was killed (signal {-code}; out of memory?)"
            if code is not None and code < 0
            else f"its process exited with status {code} (its error is on stderr)"
        )
    return replace(shape, error=outcome)


def default_order() -> tuple[str, ...]:
    """Every preset, the smallest first (phikon), so the quick figures come first."""
    return tuple(sorted(PRESETS, key=lambda p: (PRESETS[p].params, p)))


def run_bench_encoders(
    presets: Sequence[str],
    slide: Path,
    console: Console,
    *,
    tiles: int = 16,
    large_tiles: int = 4,
    rounds: int = 3,
    depth: int | None = None,
    command: str = "slidemill bench-encoders",
) -> list[EncoderRow]:
    """Measure `presets` one after another, each in its own process, printing a line as each
    finishes and the table at the end; returns the rows. `depth` builds fewer blocks (tests)."""
    rows = []
    cache: dict[tuple[int, float, int], NDArray[np.uint8]] = {}
    for name in presets:
        preset = PRESETS[name]
        count = tiles if preset.params < LARGE_PARAMS or depth is not None else large_tiles
        key = (preset.tile_px, preset.mpp, count)
        if key not in cache:
            cache[key] = tissue_tiles(slide, count, preset.tile_px, preset.mpp)
        shape = EncoderRow(name, preset.params, preset.width, count, rounds, depth=depth)
        t0 = time.perf_counter()
        row = _in_child(name, cache[key], rounds, depth, shape)
        rows.append(row)
        took = time.perf_counter() - t0
        if row.error:
            console.print(f"{name}: {row.error} ({took:.0f} s)", highlight=False)
        else:
            console.print(
                f"{name}: float32 {row.fp32_tiles_s:.2f} tiles/s, int8 {row.int8_tiles_s:.2f} "
                f"tiles/s (×{row.speedup:.2f}), cosine min {row.cos_min:.4f} ({took:.0f} s)",
                highlight=False,
            )
    console.print(encoder_table(rows, command, slide, datetime.date.today()))
    return rows


def _mib(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def encoder_table(
    rows: Sequence[EncoderRow], command: str, slide: Path, date: datetime.date
) -> Table:
    """The rows as a table, titled with the date and the command."""
    gpu = any(r.bf16_tiles_s is not None for r in rows)
    table = Table(
        Column("preset", no_wrap=True),
        "params",
        "width",
        "tiles × rounds",
        "fp32 tiles/s",
        "int8 tiles/s",
        "int8/fp32",
        "MiB before model",
        "peak MiB fp32",
        "peak MiB int8",
        "cos min",
        "cos median",
        "bf16 tiles/s",
        "note",
        title=f"{command} ({date.isoformat()}), random weights; tiles of {slide.name}",
        caption="tiles/s: median of the rounds; int8/fp32: median of each round's ratio; "
        "peak MiB: the preset's own process, model and one batch included; presets of "
        f"{LARGE_PARAMS / 1e6:.0f} M parameters or more (ViT-H, ViT-g) on fewer tiles, seconds "
        "a tile in float32 on a few cores",
    )
    for r in rows:
        notes = [f"{r.depth} blocks only"] if r.depth is not None else []
        notes += ["LayerScale γ = 1"] if r.layer_scales else []
        notes += [r.error] if r.error else []
        note = "; ".join(notes)
        measured = r.error is None
        table.add_row(
            r.preset,
            f"{r.params / 1e6:,.1f} M",
            str(r.width),
            f"{r.tiles} × {r.rounds}",
            f"{r.fp32_tiles_s:.2f}" if measured else "",
            f"{r.int8_tiles_s:.2f}" if measured else "",
            f"{r.speedup:.2f}" if measured else "",
            _mib(r.baseline_mib) if measured else "",
            _mib(r.fp32_peak_mib) if measured else "",
            _mib(r.int8_peak_mib) if measured else "",
            f"{r.cos_min:.4f}" if measured else "",
            f"{r.cos_median:.4f}" if measured else "",
            f"{r.bf16_tiles_s:.1f}" if r.bf16_tiles_s is not None else ("" if gpu else "no GPU"),
            note,
        )
    return table
