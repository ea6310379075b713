"""TransMIL (Shao et al., NeurIPS 2021): a two-layer transformer over a slide's tiles.

Self-attention over tens of thousands of tiles uses the Nyström approximation (Xiong et al.,
"Nyströmformer", AAAI 2021), implemented here rather than taken from the `nystrom-attention`
package: softmax(Q Kᵀ) is approximated through m landmark queries and keys, the means of m
contiguous segments of the sequence, at O(n·m) cost instead of O(n²).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from slidemill.workers.models._heads import HEADS, MILOutput, check_bag


def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse of each (m, m) matrix of `a` (..., m, m), iteratively.

    The third-order iteration of Razavi et al. (2014) that Nyströmformer uses,
    Z ← ¼ Z (13 I − A Z (15 I − A Z (7 I − A Z))), from Z₀ = Aᵀ / (‖A‖₁ ‖A‖_∞), which
    converges for any A. Matrix products only: cheap and stable on CPU and GPU alike.
    """
    magnitude = a.abs()
    scale = magnitude.sum(dim=-1).amax(dim=-1) * magnitude.sum(dim=-2).amax(dim=-1)  # (...)
    z = a.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_from_landmarks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_landmarks: torch.Tensor,
    k_landmarks: torch.Tensor,
    pinv_iterations: int = 6,
) -> torch.Tensor:
    """softmax(Q K̃ᵀ) · softmax(Q̃ K̃ᵀ)⁺ · softmax(Q̃ Kᵀ) V  (Nyströmformer, eq. 15).

    q, k, v: (H, n, d), q already scaled by 1/√d; landmarks (H, m, d) → (H, n, d).
    """
    kernel_1 = torch.softmax(q @ k_landmarks.transpose(-1, -2), dim=-1)  # (H, n, m)
    kernel_2 = torch.softmax(q_landmarks @ k_landmarks.transpose(-1, -2), dim=-1)  # (H, m, m)
    kernel_3 = torch.softmax(q_landmarks @ k.transpose(-1, -2), dim=-1)  # (H, m, n)
    # right to left: never form the (n, n) matrix
    return kernel_1 @ (iterative_pinv(kernel_2, pinv_iterations) @ (kernel_3 @ v))


def nystrom_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_landmarks: int,
    pinv_iterations: int = 6,
) -> torch.Tensor:
    """softmax(Q Kᵀ) V, Nyström-approximated with `n_landmarks` segment means.

    q, k, v: (H, n, d), q already scaled → (H, n, d). Exact when n ≤ n_landmarks (landmarks
    would be the tokens themselves, and exact is cheaper). Segments come from adaptive average
    pooling, so n needs no padding to a multiple of m (and no padding tokens dilute the means).
    """
    n = q.shape[-2]
    if n <= n_landmarks:
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    q_landmarks = functional.adaptive_avg_pool1d(q.transpose(-1, -2), n_landmarks).transpose(-1, -2)
    k_landmarks = functional.adaptive_avg_pool1d(k.transpose(-1, -2), n_landmarks).transpose(-1, -2)
    return nystrom_from_landmarks(q, k, v, q_landmarks, k_landmarks, pinv_iterations)


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention with a depthwise-convolution skip on the values.

    forward: tokens (n, dim) → (n, dim), and the first token's exact attention over all tokens,
    softmax(q₀ Kᵀ/√d) averaged over heads, shape (n,) (one query row: O(n) extra).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        n_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.n_landmarks = n_landmarks
        self.pinv_iterations = pinv_iterations
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        # Nyströmformer's skip: a per-head 1-D convolution of V along the sequence
        self.value_conv = nn.Conv2d(
            heads,
            heads,
            (residual_kernel, 1),
            padding=(residual_kernel // 2, 0),
            groups=heads,
            bias=False,
        )
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = tokens.shape[0]
        q, k, v = (
            t.reshape(n, self.heads, self.head_dim).transpose(0, 1)  # (H, n, d)
            for t in self.to_qkv(tokens).chunk(3, dim=-1)
        )
        q = q * self.head_dim**-0.5
        out = nystrom_attention(q, k, v, self.n_landmarks, self.pinv_iterations)
        out = out + self.value_conv(v[None])[0]
        out = self.to_out(out.transpose(0, 1).reshape(n, -1))
        # the exact row: Nyström's approximation of it can dip below zero, a heatmap must not
        first = torch.softmax(q[:, 0:1] @ k.transpose(-1, -2), dim=-1)[:, 0].mean(dim=0)
        return out, first


class TransLayer(nn.Module):
    """Pre-norm residual Nyström attention: x + Attn(LayerNorm(x)).

    forward: tokens (n, dim) → (n, dim), and the first token's attention (n,).
    """

    def __init__(
        self, dim: int, heads: int, n_landmarks: int, pinv_iterations: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(dim, heads, n_landmarks, pinv_iterations, dropout=dropout)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        update, first = self.attention(self.norm(tokens))
        return tokens + update, first


class PPEG(nn.Module):
    """Pyramid position encoding generator: the tile tokens laid on a square grid (row-major),
    plus depthwise 7×7, 5×5 and 3×3 convolutions of that grid; the class token passes through.

    forward: tokens (1 + side², dim), side → (1 + side², dim).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.conv5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        cls, tiles = tokens[:1], tokens[1:]
        grid = tiles.transpose(0, 1).reshape(1, -1, side, side)  # (1, dim, side, side)
        grid = grid + self.conv7(grid) + self.conv5(grid) + self.conv3(grid)
        return torch.cat([cls, grid.flatten(2)[0].transpose(0, 1)])


class TransMIL(nn.Module):
    """TransMIL: correlated MIL with a transformer (Shao et al., NeurIPS 2021).

    x_i → ReLU(W x_i) (dim); the N tokens are padded to side² = ⌈√N⌉² by repeating the first
    tiles, a class token is prepended, then Nyström transformer layer → PPEG → layer → LayerNorm;
    logits = W_c(class token). Per-tile logits apply W_c to each real tile's output token;
    attention is the class token's exact softmax attention over tokens in the last layer,
    averaged over heads, restricted to the N real tiles and renormalised to sum 1.

    Unlike the pooling heads it is not permutation invariant: PPEG sees the tile order.

    forward: (N, in_dim) → MILOutput(logits (C,), attention (N,), tile_logits (N, C)).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        dim: int = 512,
        heads: int = 8,
        n_landmarks: int = 256,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(dim))
        self.layer1 = TransLayer(dim, heads, n_landmarks, pinv_iterations, dropout)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim, heads, n_landmarks, pinv_iterations, dropout)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, features: torch.Tensor) -> MILOutput:
        check_bag(features, self.in_dim)
        n = features.shape[0]
        side = math.isqrt(n - 1) + 1  # ⌈√n⌉
        h = self.embed(features)  # (N, dim)
        h = h[torch.arange(side * side, device=h.device) % n]  # square: repeat the first tiles
        tokens = torch.cat([self.cls_token[None], h])  # (1 + side², dim)
        tokens, _ = self.layer1(tokens)
        tokens = self.ppeg(tokens, side)
        tokens, first = self.layer2(tokens)
        tokens = self.norm(tokens)
        attention = first[1 : n + 1]
        return MILOutput(
            logits=self.classifier(tokens[0]),
            attention=attention / attention.sum(),
            tile_logits=self.classifier(tokens[1 : n + 1]),
        )


@HEADS.register("transmil")
def _transmil(
    in_dim: int,
    n_classes: int,
    dim: int = 512,
    heads: int = 8,
    n_landmarks: int = 256,
    pinv_iterations: int = 6,
    dropout: float = 0.1,
) -> nn.Module:
    return TransMIL(in_dim, n_classes, dim, heads, n_landmarks, pinv_iterations, dropout)
