"""NCLR's cross-modal fusion and overlap heads (methods.md 3.1, Step 1-2).

Each fusion layer, for the point tokens P (n, C) and the image tokens I (m, C) of one image-cloud pair:
multi-head self-attention within each modality, multi-head cross-attention of each modality to the other,
and a point-wise feed-forward network, each with a residual connection and LayerNorm (post-norm, as the
original Transformer). Sinusoidal position encodings (of the points' x, y, z in metres and of the image
tokens' row and column in pixels) are added to the inputs of the first layer. Depth, heads and widths are not
stated in the paper (the authors' code: one attention block); they are settings.

The overlap heads are small MLPs giving a logit per point / image token (the sigmoid is in the loss).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_encoding(coords: torch.Tensor, dim: int, *, scale: float = 1.0) -> torch.Tensor:
    """(n, d) coordinates -> (n, dim) sin/cos encodings, ``dim // (2 d)`` frequencies per coordinate
    (geometric from 1 to 1/10000 per ``scale`` units); zero-padded to ``dim``."""
    n, d = coords.shape
    per = dim // (2 * d)
    if per == 0:
        return coords.new_zeros(n, dim)
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(per, device=coords.device, dtype=coords.dtype) / max(per, 1)
    )
    angles = (coords[:, :, None] / scale) * freqs  # (n, d, per)
    enc = torch.cat([angles.sin(), angles.cos()], dim=2).reshape(n, d * 2 * per)
    return torch.nn.functional.pad(enc, (0, dim - enc.shape[1]))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def self_part(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[0](x + self.self_attn(x, x, x, need_weights=False)[0])  # type: ignore[no-any-return]

    def cross_part(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        y = self.norms[1](x + self.cross_attn(x, other, other, need_weights=False)[0])
        return self.norms[2](y + self.ffn(y))  # type: ignore[no-any-return]


class FusionLayer(nn.Module):
    """Self-attention per modality, then cross-attention to the other modality (both from the
    self-attended inputs), then a feed-forward network; one block of weights per modality."""

    def __init__(self, dim: int, heads: int = 4, ffn: int = 256) -> None:
        super().__init__()
        self.points = _Block(dim, heads, ffn)
        self.image = _Block(dim, heads, ffn)

    def forward(self, points: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, i = self.points.self_part(points), self.image.self_part(image)
        return self.points.cross_part(p, i), self.image.cross_part(i, p)


class Fusion(nn.Module):
    """Stacked :class:`FusionLayer`s with sinusoidal position encodings added to the inputs."""

    def __init__(self, dim: int, *, layers: int = 1, heads: int = 4, ffn: int = 256) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(FusionLayer(dim, heads, ffn) for _ in range(layers))

    def forward(
        self,
        points: torch.Tensor,
        point_xyz: torch.Tensor,
        image: torch.Tensor,
        token_rc: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point tokens (n, C) at ``point_xyz`` (n, 3) metres, image tokens (m, C) at ``token_rc`` (m, 2)
        pixels -> fused (n, C), (m, C). One image-cloud pair (no batch dimension)."""
        p = (points + sinusoidal_encoding(point_xyz, self.dim, scale=0.1))[None]
        i = (image + sinusoidal_encoding(token_rc, self.dim, scale=1.0))[None]
        for layer in self.layers:
            p, i = layer(p, i)
        return p[0], i[0]


def overlap_head(dim: int) -> nn.Sequential:
    """Per-token MLP -> one overlap logit (the authors' code: 64 -> 64 -> 64 -> 1 with ReLU)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
