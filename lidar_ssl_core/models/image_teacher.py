"""The frozen 2D teacher of image-to-LiDAR distillation (SLidR's ``DilationFeatureExtractor`` / PPKT).

A self-supervised ResNet-50 or DINOv2 ViT/14 (:mod:`lidar_ssl_core.models.dinov2`) is loaded from a
user-given path and frozen; only a 1x1 projection head is trained. The module enforces its own
frozenness (docs style item 9): parameters never require grad, the backbone runs under ``no_grad`` and
always in ``eval`` (BN statistics frozen), ``train()`` only reaches the head, and tampering (re-enabling
grads or train mode on the backbone) is refused at the next forward.

Input images are RGB, (B, 3, H, W), either ``uint8`` in [0, 255] or floating point in [0, 1]; ImageNet
mean/std normalisation happens inside. Outputs are exactly aligned with the input pixels when H and W are
multiples of the output stride (4 dilated, 32 strided), as in the reference crops (224x416). A DINOv2
teacher sees the images resized to multiples of its patch size (14) and its projected patch map is upsampled
back to the input size, so every input pixel still gets one feature.
"""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lidar_ssl_core.errors import ConfigError, LidarSslError
from lidar_ssl_core.models.checkpoints import load_backbone_weights
from lidar_ssl_core.models.config import TeacherConfig
from lidar_ssl_core.models.dinov2 import Dinov2Features, load_dinov2
from lidar_ssl_core.models.filterbank import FilterBankBackbone
from lidar_ssl_core.models.resnet import ResNet, resnet50

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Slack on the [0, 1] check for float input (resampling can overshoot by a little).
_RANGE_TOL = 1e-3


class FrozenTeacherError(LidarSslError):
    """Someone tried to train the frozen backbone (grads re-enabled or train mode forced on it)."""


class TeacherOutput(NamedTuple):
    """``pixel_features``: (B, out_dim, H, W) unit vectors; ``backbone_features``: (B, C, h, w) frozen map.

    C, h, w: 2048 at stride 4 or 32 (ResNet-50), or the ViT width x #layers on the patch grid of the resized
    image (DINOv2). These pre-head features feed ST-SLidR's similarity, OLIVINE and ScaLR's targets.
    """

    pixel_features: torch.Tensor
    backbone_features: torch.Tensor


class ImageTeacher(nn.Module):
    """Frozen ResNet-50 / DINOv2 + trainable 1x1 conv, bilinear upsampling to the input and l2 norm."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: TeacherConfig | None = None, *, student_dim: int | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else TeacherConfig()
        if student_dim is not None and student_dim != self.config.out_dim:
            raise ConfigError(
                f"teacher out_dim {self.config.out_dim} != student feature size {student_dim}; "
                "set teacher.out_dim to the student's output channels"
            )
        self.backbone: ResNet | FilterBankBackbone | Dinov2Features
        if self.config.arch == "filterbank":
            self.backbone = FilterBankBackbone(IMAGENET_MEAN, IMAGENET_STD)
        elif self.config.arch == "dinov2":
            assert self.config.weights is not None  # the config validator requires it
            vit = load_dinov2(self.config.weights, container=self.config.container, prefix=self.config.prefix)
            self.backbone = Dinov2Features(vit, self.config.layers, self.config.final_norm)
        else:
            self.backbone = resnet50(dilated=self.config.form == "dilated", include_fc=False)
            if self.config.weights is not None:
                load_backbone_weights(
                    self.backbone,
                    self.config.weights,
                    layout=self.config.layout,
                    container=self.config.container,
                    prefix=self.config.prefix,
                )
            else:
                logger.warning(
                    "ImageTeacher has no weights file: the frozen backbone is randomly initialised"
                )
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.output_stride: int = self.backbone.output_stride
        self.head = nn.Conv2d(self.backbone.out_channels, self.config.out_dim, kernel_size=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ImageTeacher:
        """Only the head follows ``mode``; the backbone stays in eval so its BN statistics never move."""
        self.training = mode
        self.head.train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The head's parameters: what an optimiser should receive."""
        return list(self.head.parameters())

    def _check_frozen(self) -> None:
        if any(p.requires_grad for p in self.backbone.parameters()):
            raise FrozenTeacherError(
                "the teacher backbone has parameters with requires_grad=True; it must stay frozen "
                "(give the optimiser teacher.trainable_parameters(); "
                "do not call requires_grad_ on the teacher)"
            )
        if any(m.training for m in self.backbone.modules()):
            raise FrozenTeacherError(
                "the teacher backbone was put in train mode, which would update its BN statistics; "
                "call teacher.train()/eval() on the teacher itself, not on teacher.backbone"
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] RGB -> ImageNet-normalised float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"teacher input must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.float() / 255.0
        elif images.is_floating_point():
            x = images.float()
            lo, hi = float(x.min()), float(x.max())
            if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
                raise ConfigError(
                    f"float teacher input must be in [0, 1], got [{lo:.3f}, {hi:.3f}]; pass uint8 images or "
                    "divide by 255 (do not normalise them yourself: the teacher applies ImageNet mean/std)"
                )
        else:
            raise ConfigError(f"teacher input must be uint8 or floating point, got {images.dtype}")
        return (x - self.mean) / self.std

    def vit_input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') the ViT sees: ``teacher.image_size``, or the nearest multiples of the patch size."""
        if self.config.image_size is not None:
            return self.config.image_size
        p = self.output_stride
        return max(p, round(height / p) * p), max(p, round(width / p) * p)

    def _backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features of normalised images; DINOv2: resized to patch multiples, float16 on CUDA."""
        if not isinstance(self.backbone, Dinov2Features):
            out: torch.Tensor = self.backbone(x)
            return out
        size = self.vit_input_size(x.shape[-2], x.shape[-1])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        half = x.is_cuda and self.config.half_precision
        ctx = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()
        with ctx:
            feats: torch.Tensor = self.backbone(x)
        return feats.float()

    @property
    def aligns_corners(self) -> bool:
        """How input pixels map onto the frozen map: True for ResNet maps, False (patch centres) for ViTs."""
        return not isinstance(self.backbone, Dinov2Features)

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen pre-head map (B, C, h, w) alone, without the head (feature distillation targets)."""
        self._check_frozen()
        with torch.no_grad():
            return self._backbone_features(self.normalize(images))

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        """Images (B, 3, H, W) -> unit per-pixel features (B, out_dim, H, W) and the frozen backbone map."""
        self._check_frozen()
        height, width = images.shape[-2:]
        with torch.no_grad():
            feats = self._backbone_features(self.normalize(images))
        projected = self.head(feats)
        # ResNet: the reference's Upsample(scale_factor=stride, align_corners=True) when H, W are multiples
        # of the stride; aligning to the input size keeps one feature per pixel otherwise. DINOv2: patch
        # centres map to pixel centres (align_corners=False), composing with the resize above.
        upsampled = F.interpolate(
            projected, size=(height, width), mode="bilinear", align_corners=self.aligns_corners
        )
        return TeacherOutput(F.normalize(upsampled, p=2, dim=1), feats)
