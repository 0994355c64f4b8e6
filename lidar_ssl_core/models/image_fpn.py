"""A trainable image branch: the project's ResNet with a feature pyramid (FPN) decoder (NCLR's 2D network).

NCLR trains its image network from scratch together with the point network (no pre-trained 2D backbone):
a ResNet encoder and an FPN decoder (Lin et al. 2017): lateral 1x1 convolutions on the four stages, a
top-down pathway with nearest upsampling and addition, a 3x3 smoothing convolution, and a 1x1 projection
of the finest level (stride 4) to the embedding width. The ResNet depth is not stated in the paper; the
default stage depths are ResNet-50's, ``(1, 1, 1, 1)`` is a small CPU/test size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.models.image_teacher import IMAGENET_MEAN, IMAGENET_STD
from lidar_ssl_core.models.resnet import Bottleneck, ResNet

#: output stride of :class:`ResNetFPN` (the finest pyramid level, after ResNet's stem and layer1)
FPN_STRIDE = 4


class ResNetFPN(nn.Module):
    """Images (B, 3, H, W) uint8 or [0, 1] float -> (B, out_dim, ceil(H/4), ceil(W/4)) feature map."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, out_dim: int, *, layers: Sequence[int] = (3, 4, 6, 3), fpn_dim: int = 256) -> None:
        super().__init__()
        if out_dim <= 0 or fpn_dim <= 0:
            raise ConfigError(f"ResNetFPN widths must be positive, got out_dim {out_dim}, fpn_dim {fpn_dim}")
        self.encoder = ResNet(layers)
        widths = [64 * Bottleneck.expansion * 2**i for i in range(4)]  # 256, 512, 1024, 2048
        self.lateral = nn.ModuleList(nn.Conv2d(w, fpn_dim, 1) for w in widths)
        self.smooth = nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1)
        self.project = nn.Sequential(nn.ReLU(), nn.Conv2d(fpn_dim, out_dim, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] RGB -> ImageNet-normalised float."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"image branch input must be (B, 3, H, W) RGB, got {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.maxpool(enc.relu(enc.bn1(enc.conv1(self.normalize(images)))))
        stages = []
        for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
            x = layer(x)
            stages.append(x)
        top = self.lateral[3](stages[3])
        for level in (2, 1, 0):
            lateral = self.lateral[level](stages[level])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        return self.project(self.smooth(top))  # type: ignore[no-any-return]
