"""Neural network modules: the 2D teacher and the 3D sparse U-Net.

Their typed configs (:mod:`lidar_ssl_core.models.config`) are torch-free; the networks load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lidar_ssl_core._lazy import lazy_exports
from lidar_ssl_core.models.config import BackboneConfig, TeacherConfig

if TYPE_CHECKING:
    from lidar_ssl_core.models.checkpoints import CheckpointError, load_backbone_weights
    from lidar_ssl_core.models.image_teacher import ImageTeacher, TeacherOutput
    from lidar_ssl_core.models.resnet import ResNet, resnet50
    from lidar_ssl_core.models.unet import Res16UNet, build_backbone

_LAZY = {
    "CheckpointError": "checkpoints",
    "load_backbone_weights": "checkpoints",
    "ImageTeacher": "image_teacher",
    "TeacherOutput": "image_teacher",
    "ResNet": "resnet",
    "resnet50": "resnet",
    "Res16UNet": "unet",
    "build_backbone": "unet",
}
__getattr__ = lazy_exports(__name__, _LAZY)

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
