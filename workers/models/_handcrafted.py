"""`handcrafted`: pathology features that need no training, as a baseline and as a companion of a
learned encoder (`histo_cnn+handcrafted`).

Every feature is a fixed function of the tile: colour deconvolution with scikit-image's H&E-DAB
matrix (`skimage.color.hed_from_rgb`, applied in torch so a batch is one matrix product),
nuclei found as blobs of the haematoxylin channel (connected components by
`skimage.measure.label`, their moments by bincount over the whole batch), difference-of-Gaussians
peaks, and texture as grey-level pair statistics. Lesions that cover a small part of a tile are
diluted in a tile mean, so the crowding and density features also report their maximum over
windows of the tile.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional

from slidemill.schemas import Normalisation
from slidemill.workers.models._encoders import ENCODERS

HANDCRAFTED_FEATURES: tuple[str, ...] = (
    # stain densities, optical density in the skimage H&E-DAB basis
    "h_mean",  # haematoxylin: mean over the tile
    "h_std",
    "h_q50",
    "h_q90",
    "h_q99",
    "h_frac_0.5",  # share of pixels with H above 0.5, 1.0 and 1.5
    "h_frac_1.0",
    "h_frac_1.5",
    "e_mean",  # eosin
    "e_std",
    "e_q90",
    "d_mean",  # the third (DAB) axis: what H and E leave, e.g. violet or blue-grey tones
    "d_std",
    "od_mean",  # total optical density (how much stain)
    "background_frac",  # share of near-white pixels
    "h_window_max",  # the densest window's mean H, minus the tile's
    # nuclei: blobs of smoothed H above both a floor and their neighbourhood
    "blob_count_log",  # log(1 + blobs)
    "blob_cover",  # share of the tile inside blobs
    "blob_cover_window_max",  # the most covered window's share
    "blob_area_log_mean",  # mean and spread of log(area in µm²)
    "blob_area_log_std",
    "blob_area_log_q90",
    "blob_h_mean",  # mean H inside blobs
    "blob_h_contrast",  # mean H inside blobs minus outside
    "blob_elongation_mean",  # 1 - minor/major axis from second moments (0: round)
    "blob_round_frac",  # share of blobs with minor/major ≥ 0.6
    "blob_large_round_log",  # log(1 + blobs that are round and larger than the median-size prior)
    "blob_neighbours_mean",  # mean other blob centres within a window around each centre
    "blob_centres_window_max_log",  # log(1 + centres in the most crowded window)
    "blob_core_ring_ratio",  # H of the blobs' eroded cores over their rims (< 1: vesicular)
    "blob_large_round_window_max_log",  # log(1 + large round blobs in the most crowded window)
    "blob_e_mean",  # eosin and the residual axis inside blobs: the nuclei's tone
    "blob_d_mean",
    # blob detection by difference of Gaussians on H at three scales (small to enlarged nuclei)
    "dog_peaks_s1_log",
    "dog_peaks_s2_log",
    "dog_peaks_s3_log",
    "dog_max_s1",
    "dog_max_s2",
    "dog_max_s3",
    "dog_peaks_s2_window_max_log",
    "dog_peaks_s3_window_max_log",
    # texture: grey-level pair statistics (GLCM contrast and homogeneity, unquantised) and
    # gradient energy
    "grey_contrast_d1",
    "grey_contrast_d2",
    "grey_contrast_d4",
    "grey_homogeneity_d1",
    "grey_homogeneity_d2",
    "grey_homogeneity_d4",
    "h_gradient_energy",
    "e_gradient_energy",
)
"""The names of `HandcraftedEncoder`'s output columns, in order."""

_BACKGROUND_OD = 0.15
"""Total optical density below which a pixel is glass (near-white)."""
_H_FRACS = (0.5, 1.0, 1.5)
_BLOB_FLOOR = 0.35
"""Smoothed H a nucleus pixel must exceed."""
_BLOB_RISE = 0.15
"""...and by how much it must exceed its neighbourhood's mean H."""
# Sizes below are in µm; the encoder turns them into pixels at its tiles' µm/px.
_MIN_BLOB_UM2 = 4.0
"""Blobs smaller than this are noise, not nuclei."""
_LARGE_BLOB_UM2 = 60.0
"""A round blob at least this large counts as an enlarged nucleus."""
_DOG_SIGMAS_UM = (1.5, 3.0, 5.0)
"""Nucleus radii the three difference-of-Gaussians scales look for."""
_SMOOTH_UM = 1.0
"""Blur of H before blobs are found (the chromatin's grain is not a nucleus)."""
_SURROUND_UM = 6.0
"""Blur of the neighbourhood a nucleus must stand above."""
_PAIR_OFFSETS_UM = (1.0, 2.0, 4.0)
"""Offsets of the grey-level pair statistics."""
_WINDOW_UM = 28.0
"""Side of the windows whose maxima the crowding and density columns report: a few nuclei
across, so that a lesion covering a corner of the tile is not diluted in its mean."""
_DOG_THRESHOLD = 0.08
"""Response a DoG peak must exceed."""


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W), the edge pixels repeated beyond the border."""
    k = _gaussian_kernel(sigma).to(x.device)
    r = k.numel() // 2
    x = functional.pad(x, (r, r, 0, 0), mode="replicate")
    x = functional.conv2d(x, k.view(1, 1, 1, -1))
    x = functional.pad(x, (0, 0, r, r), mode="replicate")
    return functional.conv2d(x, k.view(1, 1, -1, 1))


def _local_max(x: torch.Tensor, size: int) -> torch.Tensor:
    """Maximum over size² neighbourhoods (odd size), separably: (B, 1, H, W) → the same."""
    x = functional.max_pool2d(x, (1, size), 1, (0, size // 2))
    return functional.max_pool2d(x, (size, 1), 1, (size // 2, 0))


def _local_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over size² neighbourhoods (odd size, zero outside), separably: (B, 1, H, W)."""
    x = functional.avg_pool2d(x, (1, size), 1, (0, size // 2), count_include_pad=True)
    return functional.avg_pool2d(x, (size, 1), 1, (size // 2, 0), count_include_pad=True) * size**2


def _window_max(x: torch.Tensor, size: int) -> torch.Tensor:
    """Largest mean of `x` (B, 1, H, W) over size² windows, stride size/2 → (B,)."""
    size = min(size, x.shape[-1], x.shape[-2])
    return functional.avg_pool2d(x, size, stride=max(1, size // 2)).flatten(1).amax(1)


class HandcraftedEncoder(nn.Module):
    """Hand-crafted pathology features of a tile: stain densities, nuclear blobs, texture.

    Deterministic and without weights (its state dict is empty). The tiles arrive normalised
    with the bundle's `Normalisation` (the default, ImageNet's), which is undone first. The
    outputs are put on comparable scales by construction: optical densities, shares in [0, 1],
    logarithms of counts and areas; no statistics of any data set are involved.

    Columns (`HANDCRAFTED_FEATURES`, `feature_dim` of them, each commented there): haematoxylin
    mean, std, quantiles 0.5, 0.9, 0.99 and the share above 0.5, 1.0, 1.5; eosin mean, std,
    q0.9; the residual (DAB) axis mean and std; total optical density; the glass share; the
    densest window's excess H; nuclear blobs (H above a floor and above its surroundings,
    connected components): log count, covered share and its window maximum, log-area mean, std
    and q0.9, mean H inside and its contrast with outside, elongation and the round share, log
    count of large round blobs, neighbouring centres per blob and the most crowded window's log
    count, core-to-rim H ratio, the window maximum of large round blobs, E and D inside blobs;
    difference-of-Gaussians peaks at three nucleus scales: log counts, maximal responses, window
    maxima of the two larger scales' counts; grey-level pair contrast and homogeneity at offsets
    1, 2, 4 µm, and the gradient energy of H and of E.

    Sizes are physical (µm, `_..._UM`), turned into pixels at `mpp`, the tiles' µm/px: the
    bundle passes its tiling's (`ENCODERS.resolution_kwargs`), so the same nucleus gives the
    same columns at 1 and at 0.5 µm/px.

    forward: (B, 3, H, W) float, normalised → (B, len(HANDCRAFTED_FEATURES)) float32, on the
    device of x.
    """

    feature_dim = len(HANDCRAFTED_FEATURES)

    def __init__(self, mpp: float = 1.0) -> None:
        super().__init__()
        if not mpp > 0:
            raise ValueError(f"handcrafted: mpp must be positive, got {mpp}")
        self.mpp = float(mpp)
        px = 1.0 / self.mpp  # pixels per µm
        from skimage.color import hed_from_rgb  # the well-kept stain matrix, not a copy of it

        norm = Normalisation()
        # buffers, not persistent: the encoder has no weights, the bundle holds none for it
        self.stains: torch.Tensor
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer(
            "stains", torch.tensor(np.asarray(hed_from_rgb), dtype=torch.float32), False
        )
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1), False)
        self.dog_sigmas = tuple(r * px for r in _DOG_SIGMAS_UM)
        self.smooth, self.surround = _SMOOTH_UM * px, _SURROUND_UM * px
        self.pair_offsets = tuple(max(1, round(d * px)) for d in _PAIR_OFFSETS_UM)
        self.window = max(8, round(_WINDOW_UM * px))
        self.step = max(1, round(px))  # the gradients' and erosion's reach: about 1 µm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 throughout: thresholds on optical densities do not survive bf16
        with torch.autocast(x.device.type, enabled=False):
            return self._features(x.float())

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rgb = (x * self.std + self.mean).clamp(1 / 255, 1.0)
        od = -torch.log(rgb)  # (B, 3, H, W)
        hed = torch.einsum("bchw,cs->bshw", od, self.stains)
        hc, ec, dc = hed[:, 0:1], hed[:, 1:2], hed[:, 2:3]
        grey = rgb.mean(1, keepdim=True)
        win = min(self.window, h, w)
        flat_h = hc.flatten(1)
        qs = torch.quantile(flat_h, torch.tensor([0.5, 0.9, 0.99], device=x.device), dim=1).T
        stain = [
            flat_h.mean(1, keepdim=True),
            flat_h.std(1, keepdim=True),
            qs,
            torch.stack([(flat_h > t).float().mean(1) for t in _H_FRACS], 1),
            ec.flatten(1).mean(1, keepdim=True),
            ec.flatten(1).std(1, keepdim=True),
            torch.quantile(ec.flatten(1), 0.9, dim=1, keepdim=True),
            dc.flatten(1).mean(1, keepdim=True),
            dc.flatten(1).std(1, keepdim=True),
            od.sum(1).flatten(1).mean(1, keepdim=True),
            (od.sum(1) < _BACKGROUND_OD).float().flatten(1).mean(1, keepdim=True),
            (_window_max(hc, win) - flat_h.mean(1)).unsqueeze(1),
        ]
        blobs = self._blobs(hc, ec, dc, win)
        dog = self._dog(hc, win)
        pairs = [_pair_stats(grey, d) for d in self.pair_offsets]
        texture = [
            torch.stack([c for c, _ in pairs], 1),
            torch.stack([hom for _, hom in pairs], 1),
            torch.stack([_gradient_energy(hc, self.step), _gradient_energy(ec, self.step)], 1),
        ]
        out = torch.cat([*stain, blobs, dog, *texture], 1)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)

    def _blobs(
        self, hc: torch.Tensor, ec: torch.Tensor, dc: torch.Tensor, win: int
    ) -> torch.Tensor:
        """The 17 nuclear-blob columns from H, E and D, each (B, 1, H, W) → (B, 17)."""
        hs = _blur(hc, self.smooth)
        surround = _blur(hs, self.surround)
        mask = (hs > _BLOB_FLOOR) & (hs > surround + _BLOB_RISE)  # (B, 1, H, W)
        b, _, h, w = hc.shape
        stats = _blob_moments(
            mask[:, 0].cpu().numpy(),
            hs[:, 0].cpu().numpy(),
            _erode(mask, self.step)[:, 0].cpu().numpy(),
            self.mpp,
        )
        dev = hc.device
        count = torch.from_numpy(stats.count).to(dev)
        cover_map = torch.from_numpy(stats.kept).to(dev).unsqueeze(1).float()
        centres = torch.zeros(b, 1, h, w, device=dev)
        large_round = torch.zeros(b, 1, h, w, device=dev)
        if stats.tile.size:
            t = torch.from_numpy(stats.tile).to(dev)
            cy = torch.from_numpy(stats.cy).to(dev)
            cx = torch.from_numpy(stats.cx).to(dev)
            centres[t, 0, cy, cx] = 1.0
            large_round[t, 0, cy, cx] = torch.from_numpy(stats.large_round).to(dev).float()
        # centres within a window around each centre (itself excluded)
        near = _local_sum(centres, win + 1 - win % 2)
        neighbours = ((near - 1.0) * centres).flatten(1).sum(1) / count.clamp_min(1)
        side2 = float(min(win, h, w) ** 2)
        crowd = _window_max(centres, win) * side2
        inside = cover_map.flatten(1)
        n_in = inside.sum(1).clamp_min(1)
        hs_flat = hs.flatten(1)
        h_in = (hs_flat * inside).sum(1) / n_in
        h_out = (hs_flat * (1 - inside)).sum(1) / (1 - inside).sum(1).clamp_min(1)
        per_tile = torch.from_numpy(stats.per_tile).to(dev)  # (B, 6)
        return torch.stack(
            [
                torch.log1p(count),
                inside.mean(1),
                _window_max(cover_map, win),
                per_tile[:, 0],
                per_tile[:, 1],
                per_tile[:, 2],
                torch.where(count > 0, h_in, torch.zeros_like(h_in)),
                torch.where(count > 0, h_in - h_out, torch.zeros_like(h_in)),
                per_tile[:, 3],
                per_tile[:, 4],
                torch.log1p(per_tile[:, 5]),
                neighbours,
                torch.log1p(crowd),
                torch.from_numpy(stats.core_ring).to(dev),
                torch.log1p(_window_max(large_round, win) * side2),
                (ec.flatten(1) * inside).sum(1) / n_in,
                (dc.flatten(1) * inside).sum(1) / n_in,
            ],
            1,
        )

    def _dog(self, hc: torch.Tensor, win: int) -> torch.Tensor:
        """The 8 difference-of-Gaussians columns for H (B, 1, H, W) → (B, 8)."""
        counts, maxima, maps = [], [], []
        h, w = hc.shape[-2:]
        yy = torch.arange(h, device=hc.device, dtype=torch.float32).view(h, 1)
        xx = torch.arange(w, device=hc.device, dtype=torch.float32).view(1, w)
        tie_break = 1e-6 * (xx + 16.0 * yy)
        for s in self.dog_sigmas:
            # a blob of radius r answers most strongly at sigma r/√2 against a wider surround
            sigma = s / 2**0.5
            dog = _blur(hc, sigma) - _blur(hc, 1.6 * sigma)
            size = 2 * round(s) + 1
            # a flat-topped blob has many equal maxima: a tiny ramp makes one of them the peak,
            # the same one whatever rounding the arithmetic before had
            ranked = dog + tie_break
            peaks = (ranked == _local_max(ranked, size)) & (dog > _DOG_THRESHOLD)
            counts.append(torch.log1p(peaks.flatten(1).float().sum(1)))
            maxima.append(dog.flatten(1).amax(1))
            maps.append(peaks.float())
        side = min(win, hc.shape[-1], hc.shape[-2])
        return torch.stack(
            [
                *counts,
                *maxima,
                torch.log1p(_window_max(maps[1], win) * side**2),
                torch.log1p(_window_max(maps[2], win) * side**2),
            ],
            1,
        )


def _erode(mask: torch.Tensor, step: int) -> torch.Tensor:
    """Binary erosion of (B, 1, H, W) by a (2·step + 1)² square."""
    return -_local_max(-mask.float(), 2 * step + 1) > 0.5


def _pair_stats(grey: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GLCM contrast and homogeneity over horizontal and vertical pixel pairs `d` apart,
    computed on the grey levels themselves (scaled to 0..255) rather than a quantised matrix:
    (B, 1, H, W) → two (B,)."""
    g = grey * 255.0
    diffs = [
        (g[..., :, d:] - g[..., :, :-d]).flatten(1),
        (g[..., d:, :] - g[..., :-d, :]).flatten(1),
    ]
    diff = torch.cat(diffs, 1)
    contrast = torch.log1p((diff**2).mean(1))
    homogeneity = (1.0 / (1.0 + diff.abs())).mean(1)
    return contrast, homogeneity


def _gradient_energy(x: torch.Tensor, step: int) -> torch.Tensor:
    """Mean squared central-difference gradient of (B, 1, H, W), over ±`step` px, per step²
    → (B,)."""
    gx = x[..., :, 2 * step :] - x[..., :, : -2 * step]
    gy = x[..., 2 * step :, :] - x[..., : -2 * step, :]
    return 0.25 * (gx.pow(2).flatten(1).mean(1) + gy.pow(2).flatten(1).mean(1)) / step**2


class _BlobStats:
    """Per-blob and per-tile moments of a batch's blobs (numpy, on the CPU)."""

    __slots__ = ("core_ring", "count", "cx", "cy", "kept", "large_round", "per_tile", "tile")

    def __init__(self, b: int, h: int, w: int) -> None:
        self.count = np.zeros(b, np.float32)
        self.kept = np.zeros((b, h, w), np.bool_)
        self.tile = np.zeros(0, np.int64)
        self.cy = np.zeros(0, np.int64)
        self.cx = np.zeros(0, np.int64)
        self.large_round = np.zeros(0, np.bool_)
        self.per_tile = np.zeros((b, 6), np.float32)
        self.core_ring = np.ones(b, np.float32)


def _blob_moments(
    mask: NDArray[np.bool_],
    h: NDArray[np.float32],
    core: NDArray[np.bool_],
    mpp: float,
) -> _BlobStats:
    """Connected components of a batch's masks (B, H, W), labelled in one call with no
    connection across tiles, and their moments by bincount; areas in µm² at `mpp`."""
    from skimage.measure import label

    b, hh, ww = mask.shape
    out = _BlobStats(b, hh, ww)
    # the tiles stacked into one image, an empty row after each, so that one 8-connected
    # labelling never joins two tiles
    stacked = np.zeros((b, hh + 1, ww), np.bool_)
    stacked[:, :hh] = mask
    labels2d, n = label(stacked.reshape(b * (hh + 1), ww), connectivity=2, return_num=True)
    labels = labels2d.reshape(b, hh + 1, ww)[:, :hh]
    if n == 0:
        return out
    lab = labels.ravel()
    tt, yy, xx = np.indices(labels.shape).reshape(3, -1).astype(np.float64)
    area_px = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    sy = np.bincount(lab, yy, n + 1)[1:]
    sx = np.bincount(lab, xx, n + 1)[1:]
    tile = (np.bincount(lab, tt, n + 1)[1:] / area_px).round().astype(np.int64)
    my, mx = sy / area_px, sx / area_px
    vyy = np.bincount(lab, yy * yy, n + 1)[1:] / area_px - my**2
    vxx = np.bincount(lab, xx * xx, n + 1)[1:] / area_px - mx**2
    vxy = np.bincount(lab, xx * yy, n + 1)[1:] / area_px - mx * my
    area = area_px * mpp**2
    keep = area >= _MIN_BLOB_UM2
    out.kept = (keep[np.maximum(labels - 1, 0)] & (labels > 0)).astype(np.bool_)
    # the axes of the blob's second-moment ellipse
    half_tr = 0.5 * (vyy + vxx) + 1.0 / 12  # the pixel's own extent keeps tiny blobs finite
    disc = np.sqrt(np.maximum(0.25 * (vyy - vxx) ** 2 + vxy**2, 0.0))
    ratio = np.sqrt(np.maximum(half_tr - disc, 0.0) / np.maximum(half_tr + disc, 1e-9))
    core_h = np.bincount(lab, h.ravel() * core.ravel(), n + 1)[1:]
    core_n = np.bincount(lab, core.ravel().astype(np.float64), n + 1)[1:]
    all_h = np.bincount(lab, h.ravel(), n + 1)[1:]
    tile, area, area_px, ratio = tile[keep], area[keep], area_px[keep], ratio[keep]
    core_h, core_n, all_h = core_h[keep], core_n[keep], all_h[keep]
    out.tile = tile
    out.cy = np.clip(my[keep].round(), 0, hh - 1).astype(np.int64)
    out.cx = np.clip(mx[keep].round(), 0, ww - 1).astype(np.int64)
    if tile.size == 0:
        return out
    count = np.bincount(tile, minlength=b).astype(np.float64)
    out.count = count.astype(np.float32)
    n_ = np.maximum(count, 1)
    log_area = np.log(area)
    mean_la = np.bincount(tile, log_area, b) / n_
    std_la = np.sqrt(np.maximum(np.bincount(tile, log_area**2, b) / n_ - mean_la**2, 0.0))
    q90 = np.zeros(b)
    order = np.lexsort((log_area, tile))
    starts = np.searchsorted(tile[order], np.arange(b))
    for i in np.flatnonzero(count):  # per tile with blobs: a quantile of a few values
        vals = log_area[order[starts[i] : starts[i] + int(count[i])]]
        q90[i] = np.quantile(vals, 0.9)
    round_ = ratio >= 0.6
    out.large_round = round_ & (area >= _LARGE_BLOB_UM2)
    out.per_tile[:, 0] = mean_la
    out.per_tile[:, 1] = std_la
    out.per_tile[:, 2] = q90
    out.per_tile[:, 3] = np.bincount(tile, 1.0 - ratio, b) / n_
    out.per_tile[:, 4] = np.bincount(tile, round_.astype(np.float64), b) / n_
    out.per_tile[:, 5] = np.bincount(tile, out.large_round.astype(np.float64), b)
    # core over rim: blobs with a core (eroded pixels) only
    rim_n = area_px - core_n
    has = (core_n > 0) & (rim_n > 0)
    core_mean = np.where(has, core_h / np.maximum(core_n, 1), 0.0)
    rim_mean = np.where(has, (all_h - core_h) / np.maximum(rim_n, 1), 0.0)
    ratio_blob = np.where(has, core_mean / np.maximum(rim_mean, 1e-3), 0.0)
    n_has = np.bincount(tile, has.astype(np.float64), b)
    out.core_ring = np.where(
        n_has > 0, np.bincount(tile, ratio_blob, b) / np.maximum(n_has, 1), 1.0
    ).astype(np.float32)
    return out


@ENCODERS.register("handcrafted", resolution_arg="mpp")
def _handcrafted(mpp: float = 1.0) -> nn.Module:
    return HandcraftedEncoder(mpp)
