"""tf2_msgs/TFMessage <-> StampedTransform.

A TransformStamped with ``header.frame_id = parent`` and ``child_frame_id = child`` maps points from the
child frame into the parent frame (tf2 convention), which is exactly ``StampedTransform.matrix``.
Leading '/' (ROS 1 style frame ids) is stripped. Quaternions must be finite and within 1e-2 of unit norm
(as tf2 rejects "denormalized" quaternions); slightly off ones are renormalised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from lidar_ssl_core.errors import MalformedMessageError
from lidar_ssl_core.geometry.transforms import matrix_to_quat_xyzw, transform_from_quat
from lidar_ssl_core.msg.stamps import make_header, stamp_to_ns
from lidar_ssl_core.types import StampedTransform

QUATERNION_NORM_TOLERANCE = 1e-2


def transform_stamped_to_transform(ts: Any) -> StampedTransform:
    """One geometry_msgs/TransformStamped -> StampedTransform."""
    parent = str(ts.header.frame_id).lstrip("/")
    child = str(ts.child_frame_id).lstrip("/")
    stamp_ns = stamp_to_ns(ts.header.stamp)
    if not parent or not child:
        raise MalformedMessageError(
            f"transform '{parent}' -> '{child}' has an empty frame id", stamp_ns=stamp_ns
        )
    t, r = ts.transform.translation, ts.transform.rotation
    try:
        translation = np.array([t.x, t.y, t.z], dtype=np.float64)
        quat = np.array([r.x, r.y, r.z, r.w], dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as err:  # None, strings, ints beyond float64
        raise MalformedMessageError(
            f"transform '{parent}' -> '{child}' has a non-numeric translation or rotation: {err}",
            stamp_ns=stamp_ns,
        ) from None
    with np.errstate(over="ignore"):  # components near 1e308: an infinite norm, refused below
        norm = float(np.linalg.norm(quat))
    if not np.all(np.isfinite(quat)) or abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise MalformedMessageError(
            f"transform '{parent}' -> '{child}' has an invalid quaternion (x, y, z, w) = "
            f"{quat.tolist()} (norm {norm:.6g}, expected 1)",
            stamp_ns=stamp_ns,
        )
    if not np.all(np.isfinite(translation)):
        raise MalformedMessageError(
            f"transform '{parent}' -> '{child}' has a non-finite translation {translation.tolist()}",
            stamp_ns=stamp_ns,
        )
    matrix = transform_from_quat(translation, quat / norm)
    return StampedTransform(parent=parent, child=child, stamp_ns=stamp_ns, matrix=matrix)


def tf_message_to_transforms(msg: Any) -> list[StampedTransform]:
    """tf2_msgs/TFMessage (/tf or /tf_static) -> list of StampedTransform, in message order."""
    transforms = getattr(msg, "transforms", None)
    if not isinstance(transforms, Iterable) or isinstance(transforms, str | bytes):
        raise MalformedMessageError(f"TFMessage.transforms is {transforms!r}, expected a list")
    return [transform_stamped_to_transform(ts) for ts in transforms]


def make_transform_stamped(typestore: Any, transform: StampedTransform) -> Any:
    """geometry_msgs/msg/TransformStamped of ``typestore``."""
    types = typestore.types
    matrix = np.asarray(transform.matrix, dtype=np.float64)
    q = matrix_to_quat_xyzw(matrix[:3, :3])
    t = matrix[:3, 3]
    return types["geometry_msgs/msg/TransformStamped"](
        header=make_header(typestore, transform.stamp_ns, transform.parent),
        child_frame_id=transform.child,
        transform=types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
            rotation=types["geometry_msgs/msg/Quaternion"](
                x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])
            ),
        ),
    )


def make_tf_message(typestore: Any, transforms: Iterable[StampedTransform]) -> Any:
    """tf2_msgs/msg/TFMessage of ``typestore`` (for /tf or /tf_static)."""
    return typestore.types["tf2_msgs/msg/TFMessage"](
        transforms=[make_transform_stamped(typestore, t) for t in transforms]
    )
