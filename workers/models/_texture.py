"""`texture`: weight-free colour and texture statistics of a tile from scikit-image, for lesions
that `handcrafted`'s nuclear features miss (a change of stroma, necrosis, mucin, the arrangement
of ordinary nuclei), and as its companion (`handcrafted+texture`).

Every column is a fixed function of one tile, computed by scikit-image (no statistics of any
data set, no training): colour deconvolution (`rgb2hed`), optical density and saturation of
the pixels that are neither glass nor nuclei (the stroma and cytoplasm between the nuclei);
rotation-invariant uniform local binary patterns (`local_binary_pattern`) of the grey image at
two radii; grey-level co-occurrence statistics (`graycomatrix`, `graycoprops`) of the grey and
the eosin image at four offsets, averaged over four directions; and multiscale Gaussian
intensity and edge statistics of haematoxylin (`multiscale_basic_features`). Distances are in
µm, turned into pixels at the tiles' µm/px, as `handcrafted`'s are.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from slidemill.schemas import Normalisation
from slidemill.workers.models._encoders import ENCODERS

_GLASS_OD: Final = 0.15
"""Total optical density below which a pixel is glass (as `handcrafted` counts it)."""
_NUCLEUS_H: Final = 0.06
"""`rgb2hed` haematoxylin above which a pixel belongs to a nucleus, not to the stroma."""
_LBP_POINTS: Final = 8
_LBP_RADII_UM: Final = (1.0, 3.0)
"""Radii of the grey image's local binary patterns."""
_GLCM_DISTANCES_UM: Final = (1.0, 2.0, 4.0, 8.0)
_GLCM_LEVELS: Final = 16
_GLCM_PROPS: Final = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
_GLCM_ANGLES: Final = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
_SIGMA_UM: Final = (1.0, 8.0)
"""Smallest and largest scale of the multiscale haematoxylin features."""
_N_SIGMAS: Final = 4
_MULTISCALE: Final = (
    *(f"intensity_s{i}" for i in range(_N_SIGMAS)),
    *(f"edges_s{i}" for i in range(_N_SIGMAS)),
)
"""`multiscale_basic_features`' channels in its order: the Gaussian-smoothed image at each
scale, then their Sobel edges. Its Hessian eigenvalues are left out: they cost 6× the rest of
the encoder per tile, and the pair statistics and patterns already describe the texture."""


def _names() -> tuple[str, ...]:
    colour = [
        "stroma_frac",  # share of the tile that is neither glass nor nucleus
        *(f"stroma_{c}_{s}" for c in "hed" for s in ("mean", "std")),
        *(f"stroma_od_{c}_mean" for c in "rgb"),  # optical density of each channel
        "stroma_saturation_mean",  # HSV saturation, (max - min) / max of the RGB values
        "stroma_saturation_std",
    ]
    bins = _LBP_POINTS + 2
    lbp = [f"lbp_grey_r{r:g}um_{b}" for r in _LBP_RADII_UM for b in range(bins)]
    glcm = [
        f"glcm_{img}_{p}_d{d:g}um"
        for img in ("grey", "eosin")
        for d in _GLCM_DISTANCES_UM
        for p in _GLCM_PROPS
    ]
    multi = [f"h_{f}_{s}" for f in _MULTISCALE for s in ("mean", "std")]
    return (*colour, *lbp, *glcm, *multi)


TEXTURE_FEATURES: Final = _names()
"""The names of `TextureEncoder`'s output columns, in order."""


def _quantised(image: NDArray[np.float64], lo: float, hi: float) -> NDArray[np.uint8]:
    """`image` clipped to [lo, hi] and cut into `_GLCM_LEVELS` grey levels."""
    scaled = (np.clip(image, lo, hi) - lo) / (hi - lo) * (_GLCM_LEVELS - 1)
    return np.rint(scaled).astype(np.uint8)


class TextureEncoder(nn.Module):
    """Colour and texture statistics of each tile (`TEXTURE_FEATURES`), by scikit-image.

    forward: (B, 3, H, W) float, normalised → (B, len(TEXTURE_FEATURES)) float32, on the device
    of x. The work is on the CPU, tile by tile: scikit-image's functions take one image.
    """

    feature_dim = len(TEXTURE_FEATURES)

    def __init__(self, mpp: float = 1.0) -> None:
        super().__init__()
        if not mpp > 0:
            raise ValueError(f"texture: mpp must be positive, got {mpp}")
        self.mpp = float(mpp)
        px = 1.0 / self.mpp
        norm = Normalisation()
        self.mean = np.asarray(norm.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(norm.std, dtype=np.float32).reshape(3, 1, 1)
        self.lbp_radii = tuple(max(1.0, r * px) for r in _LBP_RADII_UM)
        self.glcm_distances = sorted({max(1, round(d * px)) for d in _GLCM_DISTANCES_UM})
        # one column per µm distance even where two round to the same pixel offset
        self.glcm_index = [
            self.glcm_distances.index(max(1, round(d * px))) for d in _GLCM_DISTANCES_UM
        ]
        self.sigmas = (max(0.5, _SIGMA_UM[0] * px), max(1.0, _SIGMA_UM[1] * px))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tiles = x.detach().float().cpu().numpy()
        rgb = np.clip(tiles * self.std + self.mean, 1 / 255, 1.0).transpose(0, 2, 3, 1)
        out = np.stack([self._tile(t) for t in rgb]).astype(np.float32)
        return torch.from_numpy(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)).to(x.device)

    def _tile(self, rgb: NDArray[np.float32]) -> NDArray[np.float64]:
        from skimage.color import rgb2gray, rgb2hed
        from skimage.feature import local_binary_pattern, multiscale_basic_features

        rgb64 = rgb.astype(np.float64)
        hed = rgb2hed(rgb64)
        od = -np.log(rgb64)
        stroma = (od.sum(-1) >= _GLASS_OD) & (hed[..., 0] < _NUCLEUS_H)
        cols: list[float] = [float(stroma.mean())]
        if stroma.any():
            for c in range(3):
                vals = hed[..., c][stroma]
                cols += [float(vals.mean()), float(vals.std())]
            cols += [float(od[..., c][stroma].mean()) for c in range(3)]
            top, bottom = rgb64.max(-1)[stroma], rgb64.min(-1)[stroma]
            saturation = (top - bottom) / top
            cols += [float(saturation.mean()), float(saturation.std())]
        else:
            cols += [0.0] * 11
        grey = rgb2gray(rgb64)
        grey8 = np.rint(grey * 255).astype(np.uint8)
        bins = _LBP_POINTS + 2
        for r in self.lbp_radii:
            codes = local_binary_pattern(grey8, _LBP_POINTS, r, method="uniform")
            hist = np.bincount(codes.astype(np.int64).ravel(), minlength=bins)[:bins]
            cols += list(hist / max(hist.sum(), 1))
        cols += self._glcm(_quantised(grey, 0.0, 1.0))
        cols += self._glcm(_quantised(hed[..., 1], 0.0, 0.3))
        multi = multiscale_basic_features(
            hed[..., 0],
            intensity=True,
            edges=True,
            texture=False,
            sigma_min=self.sigmas[0],
            sigma_max=self.sigmas[1],
            num_sigma=_N_SIGMAS,
            workers=1,  # a worker's threads already encode tiles side by side
        )  # (H, W, 2 × scales), in `_MULTISCALE`'s order
        flat = multi.reshape(-1, multi.shape[-1])
        cols += [
            float(v) for j in range(flat.shape[1]) for v in (flat[:, j].mean(), flat[:, j].std())
        ]
        return np.asarray(cols, dtype=np.float64)

    def _glcm(self, image: NDArray[np.uint8]) -> list[float]:
        from skimage.feature import graycomatrix, graycoprops

        m = graycomatrix(
            image, self.glcm_distances, _GLCM_ANGLES, levels=_GLCM_LEVELS, symmetric=True,
            normed=True,
        )  # fmt: skip
        props = {p: graycoprops(m, p).mean(axis=1) for p in _GLCM_PROPS}  # per distance
        return [float(props[p][i]) for i in self.glcm_index for p in _GLCM_PROPS]


@ENCODERS.register("texture", resolution_arg="mpp")
def _texture(mpp: float = 1.0) -> nn.Module:
    return TextureEncoder(mpp)
