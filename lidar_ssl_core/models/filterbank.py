"""A fixed, label-free colour-and-texture image teacher, for worlds without a published self-supervised net.

The papers distil a ResNet-50 trained with MoCo/DINO/... on ImageNet; those weights are never downloaded
here, and a randomly initialised ResNet-50 carries little that is specific to a scene. On the synthetic
world every class keeps one look (asphalt, paving, facades, foliage, car paint; see ``synth/textures``), so
a classical filter bank (opponent colour at three scales, oriented gradient energy, local contrast and a
Laplacian at two scales) followed by a fixed random ReLU expansion describes image regions in a way that
correlates with class without ever seeing a label. That is the teacher of the learning-signal benchmark
(``benchmarks/bench_learning_signal.py``); it is also cheap on CPU (a few small convolutions).

It has no parameters: everything is a buffer computed from a fixed seed, so it is frozen by construction
and identical in every process and run. Output stride 4, like SLidR's dilated ResNet-50.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BASE_CHANNELS = 21  # 9 opponent colour + 8 gradient energy + 2 local contrast + 2 Laplacian


class FilterBankBackbone(nn.Module):
    """Normalised RGB (B, 3, H, W) -> (B, out_channels, ceil(H/4), ceil(W/4)) features; ``mean``/``std``
    are the normalisation the teacher applied (undone here: the filters work on [0, 1] RGB)."""

    output_stride = 4
    mean: torch.Tensor
    std: torch.Tensor
    opponent: torch.Tensor
    sobel: torch.Tensor
    laplacian: torch.Tensor
    projection: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        out_channels: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # opponent colour: luminance, red-green, yellow-blue
        opp = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
        self.register_buffer("opponent", opp.view(3, 3, 1, 1), persistent=False)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()]).unsqueeze(1), persistent=False)
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", lap.view(1, 1, 3, 3), persistent=False)
        proj = torch.randn(out_channels, BASE_CHANNELS, generator=g) / math.sqrt(BASE_CHANNELS)
        self.register_buffer("projection", proj.view(out_channels, BASE_CHANNELS, 1, 1), persistent=False)
        self.register_buffer("bias", 0.5 * torch.randn(out_channels, generator=g), persistent=False)

    @staticmethod
    def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
        return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)

    def base_features(self, images: torch.Tensor) -> torch.Tensor:
        """The 21 hand-made channels at stride 4, each standardised over the image."""
        rgb = images * self.std + self.mean  # back to [0, 1]
        opp = F.conv2d(rgb, self.opponent)
        lum = opp[:, :1]
        grad = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), self.sobel)
        gx, gy = grad[:, :1], grad[:, 1:]
        orient = torch.cat([gx.abs(), gy.abs(), (gx + gy).abs(), (gx - gy).abs()], 1)
        lap = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), self.laplacian).abs()
        fine = F.avg_pool2d(torch.cat([opp, orient, lap, lum * lum], 1), 4, ceil_mode=True)  # stride 4
        colour, energy, lap4, lum2 = fine[:, :3], fine[:, 3:7], fine[:, 7:8], fine[:, 8:9]
        contrast = (lum2 - colour[:, :1] ** 2).clamp_min(0).sqrt()
        wide = self._blur(torch.cat([colour, energy, lap4, contrast], 1), 5)
        wider = self._blur(colour, 13)
        feats = torch.cat(
            [colour, wide[:, :3], wider, energy, wide[:, 3:7], contrast, wide[:, 8:9], lap4, wide[:, 7:8]], 1
        )
        # per image, so a frame's teacher features never depend on the other frames of its batch (or rank)
        mu = feats.mean(dim=(2, 3), keepdim=True)
        sd = feats.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        return (feats - mu) / sd

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        base = self.base_features(images)
        return F.relu(F.conv2d(base, self.projection, self.bias))
