"""The frozen-teacher distillation family (PPKT, SLidR, ST-SLidR, ST-PPKT): shared teacher and checkpoint.

The 2D teacher is a frozen ResNet-50 (or the filterbank) with a trainable 1x1 head; only the head is
checkpointed (the backbone is rebuilt from its weights file, or from the seed for a random teacher).
Optimiser: SGD over the 3D backbone and the head (the base class default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from lidar_ssl_core.models.image_teacher import ImageTeacher, TeacherOutput
from lidar_ssl_core.train.methods.base import MethodOutput, MethodSetup, PretrainMethod, StepContext

if TYPE_CHECKING:
    from lidar_ssl_core.train.config import PretrainConfig


class TeacherDistillation(PretrainMethod):
    """A frozen image teacher + trainable head; subclasses give the loss of (batch, points, teacher)."""

    uses_teacher = True

    def __init__(self, config: PretrainConfig, setup: MethodSetup) -> None:
        super().__init__(config, setup)
        self.teacher = ImageTeacher(config.teacher, student_dim=setup.student_dim)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("teacher.backbone.",)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.teacher.trainable_parameters()

    def teacher_features(self, batch: Mapping[str, Any], step: StepContext) -> TeacherOutput:
        """The teacher's outputs on the batch images, in float32 (losses are computed in float32)."""
        with step.autocast():
            out = self.teacher(batch["images"])
        return TeacherOutput(out.pixel_features.float(), out.backbone_features.float())

    def forward(  # type: ignore[override]
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, step: StepContext
    ) -> MethodOutput:
        loss = self.distillation_loss(batch, point_feats, self.teacher_features(batch, step), step)
        return MethodOutput(loss, {})

    def distillation_loss(
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, teacher: TeacherOutput, step: StepContext
    ) -> torch.Tensor:
        raise NotImplementedError

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Also reads checkpoints written before the method interface (a top-level ``teacher_head``)."""
        if "teacher_head" in state and not any(k.startswith("teacher.") for k in state):
            state = {f"teacher.head.{k}": v for k, v in state["teacher_head"].items()}
        super().load_checkpoint_state(state)
