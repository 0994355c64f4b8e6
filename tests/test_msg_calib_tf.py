"""CameraInfo <-> CameraIntrinsics and TFMessage <-> StampedTransform, with rclpy stand-ins and errors."""

from __future__ import annotations

import array
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from lidar_ssl_core.errors import CalibrationError, MalformedMessageError
from lidar_ssl_core.geometry.transforms import apply, make_transform, transform_from_quat
from lidar_ssl_core.msg.camera_info import camera_info_to_intrinsics, make_camera_info
from lidar_ssl_core.msg.stamps import ns_to_sec_nanosec, stamp_to_ns
from lidar_ssl_core.msg.tf import make_tf_message, tf_message_to_transforms
from lidar_ssl_core.types import CameraIntrinsics, StampedTransform

TS = get_typestore(Stores.ROS2_HUMBLE)
CI = "sensor_msgs/msg/CameraInfo"
TF = "tf2_msgs/msg/TFMessage"
STAMP = 1_532_402_927_612_460_000


def roundtrip(msg: Any, msgtype: str) -> Any:
    return TS.deserialize_cdr(TS.serialize_cdr(msg, msgtype), msgtype)


def nuscenes_front_intrinsics(nuscenes_root: Path) -> CameraIntrinsics:
    table = json.loads((nuscenes_root / "v1.0-mini" / "calibrated_sensor.json").read_text())
    sensors = json.loads((nuscenes_root / "v1.0-mini" / "sensor.json").read_text())
    front = next(s["token"] for s in sensors if s["channel"] == "CAM_FRONT")
    K = np.array(next(c["camera_intrinsic"] for c in table if c["sensor_token"] == front))
    return CameraIntrinsics(K=K, width=1600, height=900, frame_id="CAM_FRONT", D=np.zeros(5))


def test_camera_info_round_trip_with_real_intrinsics(nuscenes_root: Path) -> None:
    intr = nuscenes_front_intrinsics(nuscenes_root)
    msg = roundtrip(make_camera_info(TS, intr, STAMP), CI)
    assert stamp_to_ns(msg.header.stamp) == STAMP
    out = camera_info_to_intrinsics(msg)
    np.testing.assert_array_equal(out.K, intr.K)
    np.testing.assert_array_equal(out.D, np.zeros(5))
    np.testing.assert_array_equal(out.P, np.hstack([intr.K, np.zeros((3, 1))]))
    assert (out.width, out.height, out.frame_id, out.distortion_model) == (
        1600,
        900,
        "CAM_FRONT",
        "plumb_bob",
    )


def test_zero_projection_means_unset() -> None:
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    msg = roundtrip(make_camera_info(TS, CameraIntrinsics(K=K, width=640, height=480, frame_id="cam"), 0), CI)
    msg.p = np.zeros(12)
    out = camera_info_to_intrinsics(msg)
    assert out.P is None
    np.testing.assert_array_equal(out.projection[:, :3], K)


def rclpy_camera_info(**overrides: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "header": SimpleNamespace(stamp=SimpleNamespace(sec=3, nanosec=5), frame_id="/cam_left"),
        "height": 480,
        "width": 640,
        "distortion_model": "rational_polynomial",
        "d": [0.1, -0.2, 0.0, 0.0, 0.01, 0.0, 0.0, 0.0],
        "k": array.array("d", [400.0, 0.0, 320.0, 0.0, 410.0, 240.0, 0.0, 0.0, 1.0]),
        "r": array.array("d", np.eye(3).reshape(-1)),
        "p": [400.0, 0.0, 320.0, 0.0, 0.0, 410.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    }
    base.update(overrides)
    return SimpleNamespace(**base)


def test_rclpy_stand_in_camera_info() -> None:
    out = camera_info_to_intrinsics(rclpy_camera_info())
    assert out.frame_id == "cam_left"
    assert out.K[1, 1] == 410.0
    assert out.D.shape == (8,)
    assert out.distortion_model == "rational_polynomial"
    assert out.is_distorted


def test_real_rclpy_camera_info_if_installed() -> None:
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    msg = sensor_msgs.CameraInfo()
    msg.header.frame_id = "cam"
    msg.width, msg.height = 640, 480
    msg.k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    out = camera_info_to_intrinsics(msg)
    assert out.K[0, 0] == 500.0
    assert out.P is None  # the default all-zero p


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        ({"k": [0.0] * 9}, CalibrationError, ["fx=0.0", "cam_left"]),
        ({"width": 0}, CalibrationError, ["0x480"]),
        ({"d": [float("nan")] * 5}, CalibrationError, ["D has non-finite"]),
        ({"k": [1.0] * 8}, MalformedMessageError, ["CameraInfo.k has 8 values"]),
        ({"p": [1.0] * 11}, MalformedMessageError, ["CameraInfo.p has 11 values"]),
        ({"k": [400.0, 0, 320, 0, 400, 240, 0, 0, 0]}, CalibrationError, ["K[2,2]"]),
    ],
)
def test_camera_info_errors(overrides: dict[str, Any], error: type[Exception], words: list[str]) -> None:
    with pytest.raises(error) as info:
        camera_info_to_intrinsics(rclpy_camera_info(**overrides))
    for word in words:
        assert word in str(info.value)


# ------------------------------------------------------------------------------------------------- tf


def test_tf_round_trip_and_direction(nuscenes_root: Path) -> None:
    table = json.loads((nuscenes_root / "v1.0-mini" / "calibrated_sensor.json").read_text())
    cam = table[1]  # a camera's camera -> ego extrinsics; nuScenes quaternions are (w, x, y, z)
    w, x, y, z = cam["rotation"]
    T_cam = transform_from_quat(cam["translation"], [x, y, z, w])
    # lidar_top: 90 degrees about z, 2 m up: lidar x axis points along base_link y.
    T_lidar = make_transform([[0, -1, 0], [1, 0, 0], [0, 0, 1]], [1.0, 0.0, 2.0])
    transforms = [
        StampedTransform("base_link", "lidar_top", STAMP, T_lidar),
        StampedTransform("base_link", "CAM_FRONT", STAMP + 1, T_cam),
    ]
    msg = roundtrip(make_tf_message(TS, transforms), TF)
    assert msg.transforms[0].header.frame_id == "base_link"
    assert msg.transforms[0].child_frame_id == "lidar_top"
    out = tf_message_to_transforms(msg)
    assert [(t.parent, t.child, t.stamp_ns) for t in out] == [
        ("base_link", "lidar_top", STAMP),
        ("base_link", "CAM_FRONT", STAMP + 1),
    ]
    np.testing.assert_allclose(out[0].matrix, T_lidar, atol=1e-12)
    np.testing.assert_allclose(out[1].matrix, T_cam, atol=1e-12)
    # matrix maps child points into the parent frame
    np.testing.assert_allclose(apply(out[0].matrix, np.array([[1.0, 0.0, 0.0]])), [[1.0, 1.0, 2.0]])


def stamped(parent: str, child: str, q: list[float], t: list[float] | None = None) -> SimpleNamespace:
    vec = t or [0.0, 0.0, 0.0]
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=10, nanosec=500), frame_id=parent),
        child_frame_id=child,
        transform=SimpleNamespace(
            translation=SimpleNamespace(x=vec[0], y=vec[1], z=vec[2]),
            rotation=SimpleNamespace(x=q[0], y=q[1], z=q[2], w=q[3]),
        ),
    )


def test_leading_slashes_and_slightly_denormalised_quaternion() -> None:
    msg = SimpleNamespace(transforms=[stamped("/map", "/base_link", [0.0, 0.0, 0.0, 1.001], [1, 2, 3])])
    (tr,) = tf_message_to_transforms(msg)
    assert (tr.parent, tr.child, tr.stamp_ns) == ("map", "base_link", 10_000_000_500)
    np.testing.assert_allclose(tr.matrix, make_transform(np.eye(3), [1, 2, 3]), atol=1e-12)


@pytest.mark.parametrize(
    "q",
    [[0.0, 0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 2.0]],
    ids=["zero", "nan", "norm2"],
)
def test_invalid_quaternions_are_malformed(q: list[float]) -> None:
    msg = SimpleNamespace(transforms=[stamped("base_link", "lidar_top", q)])
    with pytest.raises(MalformedMessageError, match="'base_link' -> 'lidar_top' has an invalid quaternion"):
        tf_message_to_transforms(msg)


def test_nonfinite_translation_and_empty_frame() -> None:
    with pytest.raises(MalformedMessageError, match="non-finite translation"):
        tf_message_to_transforms(
            SimpleNamespace(transforms=[stamped("a", "b", [0, 0, 0, 1], [float("inf"), 0, 0])])
        )
    with pytest.raises(MalformedMessageError, match="empty frame id"):
        tf_message_to_transforms(SimpleNamespace(transforms=[stamped("", "b", [0, 0, 0, 1])]))


def test_stamp_helpers() -> None:
    assert ns_to_sec_nanosec(1_500_000_000) == (1, 500_000_000)
    assert ns_to_sec_nanosec(-1) == (-1, 999_999_999)
    assert stamp_to_ns(SimpleNamespace(secs=2, nsecs=3)) == 2_000_000_003
    with pytest.raises(MalformedMessageError, match="nanosec"):
        stamp_to_ns(SimpleNamespace(sec=1, nanosec=2_000_000_000))
