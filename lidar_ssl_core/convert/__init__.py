"""Dataset converters: nuScenes and KITTI (raw, object, SemanticKITTI) to bags in the project profile.

See docs/converters.md for the mapping of each dataset onto the profile. ``nuscenes-devkit`` is only
imported when a nuScenes dataroot is converted.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: public name -> submodule; imported on first use so ``lidar_ssl_core.convert.cli`` (and ``--help``) stays
#: light: the converters need numpy, rosbags and OpenCV
_EXPORTS = {
    "ConversionUnit": "common",
    "ConvertOptions": "common",
    "ConvertSummary": "common",
    "ProgressEvent": "common",
    "UnitResult": "common",
    "run_units": "common",
    "convert_kitti_object": "kitti_object",
    "convert_kitti_raw": "kitti_raw",
    "convert_nuscenes": "nuscenes",
    "convert_semantickitti": "semantickitti",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


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
