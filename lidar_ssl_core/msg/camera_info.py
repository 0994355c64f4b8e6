"""sensor_msgs/CameraInfo <-> CameraIntrinsics.

Error policy: a message whose *structure* is wrong (K not 9 numbers, P not 12, D not numbers) is a
``MalformedMessageError``; a well-formed message whose *values* make the camera unusable (fx or fy <= 0,
non-finite numbers, zero image size - typical of drivers that publish an uncalibrated, all-zero
CameraInfo) is a ``CalibrationError``, the same family as a missing calibration. An all-zero P means
"not set" and becomes ``P=None`` (so ``projection`` falls back to ``[K | 0]``).
Field names are read as ``k``/``d``/``p`` (ROS 2) or ``K``/``D``/``P`` (ROS 1 style).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import CalibrationError, MalformedMessageError
from lidar_ssl_core.msg.ranges import uint32_field
from lidar_ssl_core.msg.stamps import header_stamp_ns, make_header
from lidar_ssl_core.types import CameraIntrinsics


def _field(msg: Any, name: str) -> Any:
    value = getattr(msg, name, None)
    if value is None:
        value = getattr(msg, name.upper(), None)
    if value is None:
        raise MalformedMessageError(f"CameraInfo has no field '{name}'")
    return value


def _numbers(msg: Any, name: str, size: int | None) -> npt.NDArray[np.float64]:
    try:
        arr = np.asarray(_field(msg, name), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as err:
        raise MalformedMessageError(f"CameraInfo.{name} is not a list of numbers: {err}") from err
    if size is not None and arr.size != size:
        raise MalformedMessageError(f"CameraInfo.{name} has {arr.size} values, expected {size}")
    return arr


def camera_info_to_intrinsics(msg: Any) -> CameraIntrinsics:
    """Validated CameraIntrinsics of a CameraInfo (rosbags or rclpy message)."""
    frame_id = str(msg.header.frame_id).lstrip("/")
    stamp_ns = header_stamp_ns(msg)
    where = f"CameraInfo of frame '{frame_id}' at t={stamp_ns / 1e9:.9f}s"
    K = _numbers(msg, "k", 9).reshape(3, 3)
    D = _numbers(msg, "d", None)
    P = _numbers(msg, "p", 12).reshape(3, 4)
    width = uint32_field(msg.width, "CameraInfo.width")
    height = uint32_field(msg.height, "CameraInfo.height")
    if width <= 0 or height <= 0:
        raise CalibrationError(f"{where}: image size {width}x{height} must be > 0 (camera not calibrated?)")
    for name, arr in (("K", K), ("D", D), ("P", P)):
        if not np.all(np.isfinite(arr)):
            raise CalibrationError(f"{where}: {name} has non-finite values {arr.reshape(-1).tolist()}")
    fx, fy = K[0, 0], K[1, 1]
    if fx <= 0.0 or fy <= 0.0:
        raise CalibrationError(
            f"{where}: K has fx={fx}, fy={fy}; both must be > 0 (an all-zero K means uncalibrated)"
        )
    if not np.isclose(K[2, 2], 1.0):
        raise CalibrationError(f"{where}: K[2,2] is {K[2, 2]}, expected 1")
    distortion_model = str(getattr(msg, "distortion_model", "") or "plumb_bob")
    return CameraIntrinsics(
        K=K,
        width=width,
        height=height,
        frame_id=frame_id,
        D=D,
        distortion_model=distortion_model,
        P=None if not np.any(P) else P,
    )


def make_camera_info(typestore: Any, intrinsics: CameraIntrinsics, stamp_ns: int) -> Any:
    """sensor_msgs/msg/CameraInfo of ``typestore`` (R = identity, P = ``intrinsics.projection``)."""
    cls = typestore.types["sensor_msgs/msg/CameraInfo"]
    roi_cls = typestore.types["sensor_msgs/msg/RegionOfInterest"]
    return cls(
        header=make_header(typestore, stamp_ns, intrinsics.frame_id),
        height=int(intrinsics.height),
        width=int(intrinsics.width),
        distortion_model=intrinsics.distortion_model,
        d=np.asarray(intrinsics.D, dtype=np.float64).reshape(-1).copy(),
        k=np.asarray(intrinsics.K, dtype=np.float64).reshape(9).copy(),
        r=np.eye(3).reshape(9),
        p=np.asarray(intrinsics.projection, dtype=np.float64).reshape(12).copy(),
        binning_x=0,
        binning_y=0,
        roi=roi_cls(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )
