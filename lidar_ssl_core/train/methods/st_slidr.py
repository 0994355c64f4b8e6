"""ST-SLidR: SLidR with the semantically tolerant loss and class-agnostic balancing (losses/st_slidr.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lidar_ssl_core.losses import TolerantOptions, st_slidr_loss
from lidar_ssl_core.models.image_teacher import TeacherOutput
from lidar_ssl_core.train.config import LossOptions
from lidar_ssl_core.train.methods.base import StepContext, register
from lidar_ssl_core.train.methods.distill import TeacherDistillation
from lidar_ssl_core.train.methods.slidr import SUPERPIXEL_KEYS


def tolerance_options(options: LossOptions, *, balance: bool) -> TolerantOptions:
    """The semantically tolerant loss settings shared by ST-SLidR and ST-PPKT."""
    return TolerantOptions(
        temperature=options.temperature,
        tolerance=options.tolerance,
        k_fraction=options.k_fraction,
        alpha_min=options.alpha_min,
        balance=balance,
        form=options.form,
        vote_threshold=options.vote_threshold,
        vote_norm=options.vote_norm,
        adaptive_k=options.adaptive_k,
    )


@register
class STSLidR(TeacherDistillation):
    """Semantically tolerant superpixel InfoNCE (Mahmoud et al. 2023)."""

    name = "st-slidr"
    needs_superpixels = True
    batch_keys = SUPERPIXEL_KEYS

    def distillation_loss(
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, teacher: TeacherOutput, step: StepContext
    ) -> torch.Tensor:
        options = self.config.loss
        return st_slidr_loss(
            point_feats,
            teacher.pixel_features,
            teacher.backbone_features,
            batch["pairing_voxels"],
            batch["pairing_images"],
            batch["superpixels"],
            batch["pairing_superpixels"],
            options=tolerance_options(options, balance=options.balance),
            gather=step.gather,
        )
