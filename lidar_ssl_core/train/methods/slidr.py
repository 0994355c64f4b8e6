"""SLidR: superpixel-pooled InfoNCE (losses/slidr.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lidar_ssl_core.losses import slidr_loss
from lidar_ssl_core.models.image_teacher import TeacherOutput
from lidar_ssl_core.train.methods.base import StepContext, register
from lidar_ssl_core.train.methods.distill import TeacherDistillation

SUPERPIXEL_KEYS = ("pairing_voxels", "pairing_images", "images", "superpixels", "pairing_superpixels")


@register
class SLidR(TeacherDistillation):
    """Superpoint-superpixel InfoNCE with a frozen teacher (Sautier et al. 2022)."""

    name = "slidr"
    needs_superpixels = True
    batch_keys = SUPERPIXEL_KEYS

    def distillation_loss(
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, teacher: TeacherOutput, step: StepContext
    ) -> torch.Tensor:
        return slidr_loss(
            point_feats,
            teacher.pixel_features,
            batch["pairing_voxels"],
            batch["pairing_images"],
            batch["superpixels"],
            batch["pairing_superpixels"],
            temperature=self.config.loss.temperature,
            gather=step.gather,
        )
