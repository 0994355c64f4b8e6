"""Dataset converters: nuScenes and KITTI (raw, object, SemanticKITTI) to bags in the project profile.

See docs/converters.md for the mapping of each dataset onto the profile. ``nuscenes-devkit`` is only
imported when a nuScenes dataroot is converted.
"""

from __future__ import annotations

from lidar_ssl_core.convert.common import (
    ConversionUnit,
    ConvertOptions,
    ConvertSummary,
    ProgressEvent,
    UnitResult,
    run_units,
)
from lidar_ssl_core.convert.kitti_object import convert_kitti_object
from lidar_ssl_core.convert.kitti_raw import convert_kitti_raw
from lidar_ssl_core.convert.nuscenes import convert_nuscenes
from lidar_ssl_core.convert.semantickitti import convert_semantickitti

__all__ = [
    "ConversionUnit",
    "ConvertOptions",
    "ConvertSummary",
    "ProgressEvent",
    "UnitResult",
    "convert_kitti_object",
    "convert_kitti_raw",
    "convert_nuscenes",
    "convert_semantickitti",
    "run_units",
]
