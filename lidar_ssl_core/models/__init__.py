"""Neural network modules (2D teacher, ...); importing this package needs only torch."""

from __future__ import annotations

from lidar_ssl_core.models.checkpoints import CheckpointError, load_backbone_weights
from lidar_ssl_core.models.image_teacher import ImageTeacher, TeacherConfig, TeacherOutput
from lidar_ssl_core.models.resnet import ResNet, resnet50

__all__ = [
    "CheckpointError",
    "ImageTeacher",
    "ResNet",
    "TeacherConfig",
    "TeacherOutput",
    "load_backbone_weights",
    "resnet50",
]
