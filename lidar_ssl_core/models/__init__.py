"""Neural network modules: the 2D teacher and the 3D sparse U-Net; importing this needs only torch."""

from __future__ import annotations

from lidar_ssl_core.models.checkpoints import CheckpointError, load_backbone_weights
from lidar_ssl_core.models.image_teacher import ImageTeacher, TeacherConfig, TeacherOutput
from lidar_ssl_core.models.resnet import ResNet, resnet50
from lidar_ssl_core.models.unet import BackboneConfig, Res16UNet, build_backbone

__all__ = [
    "BackboneConfig",
    "CheckpointError",
    "ImageTeacher",
    "Res16UNet",
    "ResNet",
    "TeacherConfig",
    "TeacherOutput",
    "build_backbone",
    "load_backbone_weights",
    "resnet50",
]
