"""ST-PPKT: PPKT with the kNN tolerance at pixel level (ST-SLidR supplementary; losses/st_slidr.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lidar_ssl_core.losses import st_ppkt_loss
from lidar_ssl_core.models.image_teacher import TeacherOutput
from lidar_ssl_core.train.methods.base import StepContext, register
from lidar_ssl_core.train.methods.distill import TeacherDistillation
from lidar_ssl_core.train.methods.st_slidr import tolerance_options


@register
class STPPKT(TeacherDistillation):
    """Semantically tolerant point-pixel InfoNCE."""

    name = "st-ppkt"

    def distillation_loss(
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, teacher: TeacherOutput, step: StepContext
    ) -> torch.Tensor:
        options = self.config.loss
        return st_ppkt_loss(
            point_feats,
            teacher.pixel_features,
            teacher.backbone_features,
            batch["pairing_voxels"],
            batch["pairing_images"],
            options=tolerance_options(options, balance=options.ppkt_balance),
            num_matches=options.num_matches,
            teacher_align_corners=self.teacher.aligns_corners,
            swap_teacher_axes=options.swap_teacher_axes,
            generator=step.generator,
            gather=step.gather,
        )
