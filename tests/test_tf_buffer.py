"""TransformBuffer: chaining, direction, interpolation, extrapolation limits, history bound, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lidar_ssl_core.errors import CalibrationError, TransformNotFoundError
from lidar_ssl_core.geometry.tf_buffer import TransformBuffer
from lidar_ssl_core.geometry.transforms import invert, make_transform, matrix_to_quat_xyzw
from lidar_ssl_core.types import StampedTransform

S = 1_000_000_000


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose(yaw: float, t: tuple[float, float, float]) -> np.ndarray:
    return make_transform(rot_z(yaw), t)


BASE_LIDAR = make_transform(rot_z(0.1), [1.0, 0.0, 1.8])
# camera optical frame: z forward (= base x), x right (= -base y), y down (= -base z)
OPTICAL = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
BASE_CAM = make_transform(OPTICAL.T, [1.5, 0.2, 1.5])


@pytest.fixture
def buf() -> TransformBuffer:
    b = TransformBuffer()
    b.add(StampedTransform("base_link", "lidar_top", 0, BASE_LIDAR), static=True)
    b.add(StampedTransform("base_link", "cam_front", 0, BASE_CAM), static=True)
    # ego drives along x at 10 m/s and turns at 0.2 rad/s; inserted out of order
    for k in (2, 0, 3, 1):
        b.add(StampedTransform("map", "base_link", k * S, pose(0.2 * k, (10.0 * k, 0.0, 0.0))), static=False)
    return b


def test_static_chain_both_directions(buf: TransformBuffer) -> None:
    T = buf.lookup("cam_front", "lidar_top", 0)
    np.testing.assert_allclose(T, invert(BASE_CAM) @ BASE_LIDAR, atol=1e-12)
    np.testing.assert_allclose(buf.lookup("lidar_top", "cam_front", 0) @ T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(buf.lookup("base_link", "lidar_top", 5), BASE_LIDAR)
    np.testing.assert_allclose(buf.lookup("lidar_top", "base_link", 5), invert(BASE_LIDAR))
    np.testing.assert_array_equal(buf.lookup("lidar_top", "lidar_top", 5), np.eye(4))
    assert buf.is_static_path("cam_front", "lidar_top")
    assert not buf.is_static_path("map", "lidar_top")


def test_dynamic_exact_and_interpolated(buf: TransformBuffer) -> None:
    np.testing.assert_array_equal(buf.lookup("map", "base_link", 2 * S), pose(0.4, (20.0, 0, 0)))
    T = buf.lookup("map", "base_link", int(1.25 * S))
    np.testing.assert_allclose(T, pose(0.25, (12.5, 0, 0)), atol=1e-12)  # slerp of yaw is linear in yaw
    # Chained through map: lidar at t -> map
    T = buf.lookup("map", "lidar_top", int(2.5 * S))
    np.testing.assert_allclose(T, pose(0.5, (25.0, 0, 0)) @ BASE_LIDAR, atol=1e-12)
    # map -> camera (inverse direction of a dynamic edge)
    T = buf.lookup("cam_front", "map", int(0.5 * S))
    np.testing.assert_allclose(T, invert(BASE_CAM) @ invert(pose(0.1, (5.0, 0, 0))), atol=1e-12)
    assert buf.time_range("map", "base_link") == (0, 3 * S)


def test_lookup_full_compensates_motion(buf: TransformBuffer) -> None:
    # A point fixed in the world, seen by the lidar at t=1 s, must land where the camera sees it at t=2 s.
    p_world = np.array([30.0, 5.0, 1.0, 1.0])
    p_lidar = invert(pose(0.2, (10.0, 0, 0)) @ BASE_LIDAR) @ p_world
    p_cam_t2 = invert(pose(0.4, (20.0, 0, 0)) @ BASE_CAM) @ p_world
    T = buf.lookup_full("cam_front", 2 * S, "lidar_top", 1 * S, "map")
    np.testing.assert_allclose(T @ p_lidar, p_cam_t2, atol=1e-9)


def test_extrapolation_error_names_frames_time_and_range(buf: TransformBuffer) -> None:
    with pytest.raises(TransformNotFoundError) as info:
        buf.lookup("map", "lidar_top", 3 * S + 10_000_000)
    msg = str(info.value)
    assert "map <- lidar_top" in msg and "3.010000000s" in msg
    assert "0.000000000s to 3.000000000s" in msg and "after" in msg
    assert isinstance(info.value, CalibrationError)
    # Within the tolerance the end sample is held.
    np.testing.assert_allclose(
        buf.lookup("map", "base_link", 3 * S + 500), pose(0.6, (30.0, 0, 0)), atol=1e-15
    )
    with pytest.raises(TransformNotFoundError, match="before"):
        buf.lookup("map", "base_link", -2000)


def test_configurable_extrapolation() -> None:
    b = TransformBuffer(max_extrapolation_ns=S // 10)
    b.add(StampedTransform("map", "base_link", S, pose(0.0, (1.0, 0, 0))), static=False)
    np.testing.assert_array_equal(b.lookup("map", "base_link", S + S // 20)[:3, 3], [1.0, 0, 0])
    with pytest.raises(TransformNotFoundError):
        b.lookup("map", "base_link", S + S // 5)
    with pytest.raises(ValueError):
        TransformBuffer(max_extrapolation_ns=-1)


def test_no_path_lists_known_frames(buf: TransformBuffer) -> None:
    with pytest.raises(
        TransformNotFoundError, match=r"cam_rear.*unknown.*known frames: base_link, cam_front"
    ):
        buf.lookup("cam_rear", "lidar_top", 0)
    buf.add(StampedTransform("odom", "imu", 0, np.eye(4)), static=True)
    with pytest.raises(TransformNotFoundError, match="separate trees"):
        buf.lookup("imu", "lidar_top", 0)
    assert not buf.has_path("imu", "lidar_top")
    assert buf.has_path("map", "cam_front")
    assert buf.frames() == ["base_link", "cam_front", "imu", "lidar_top", "map", "odom"]


def test_duplicate_stamp_replaces_and_history_is_bounded() -> None:
    b = TransformBuffer(max_history_ns=2 * S)
    for k in range(10):
        b.add(StampedTransform("map", "base_link", k * S, pose(0.0, (float(k), 0, 0))), static=False)
    b.add(StampedTransform("map", "base_link", 9 * S, pose(0.0, (99.0, 0, 0))), static=False)
    assert b.time_range("map", "base_link") == (7 * S, 9 * S)
    assert b.lookup("map", "base_link", 9 * S)[0, 3] == 99.0
    with pytest.raises(TransformNotFoundError, match=r"7\.000000000s to 9\.000000000s"):
        b.lookup("map", "base_link", 6 * S)
    # an old sample inserted late is dropped again at once
    b.add(StampedTransform("map", "base_link", 1 * S, pose(0.0, (1.0, 0, 0))), static=False)
    assert b.time_range("map", "base_link") == (7 * S, 9 * S)


def test_invalid_inputs() -> None:
    b = TransformBuffer()
    with pytest.raises(ValueError, match="distinct"):
        b.add(StampedTransform("a", "a", 0, np.eye(4)), static=True)
    with pytest.raises(ValueError, match="4x4"):
        b.add(StampedTransform("a", "b", 0, np.eye(3)), static=True)


def test_slerp_rotation_is_unit_and_midway() -> None:
    b = TransformBuffer()
    R1 = make_transform(np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), [0, 0, 0])  # 90 deg about x
    b.add(StampedTransform("w", "b", 0, np.eye(4)), static=False)
    b.add(StampedTransform("w", "b", 2, R1), static=False)
    R = b.lookup("w", "b", 1)[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    half = np.sqrt(0.5 * (1 - np.cos(np.pi / 4)))  # sin(22.5 deg)
    np.testing.assert_allclose(matrix_to_quat_xyzw(R), [half, 0, 0, np.cos(np.pi / 8)], atol=1e-12)


def test_concurrent_add_and_lookup() -> None:
    b = TransformBuffer(max_history_ns=50 * S)
    b.add(StampedTransform("base_link", "lidar", 0, BASE_LIDAR), static=True)
    b.add(StampedTransform("map", "base_link", 0, pose(0.0, (0.0, 0, 0))), static=False)
    errors: list[BaseException] = []

    def writer() -> None:
        for k in range(1, 400):
            b.add(StampedTransform("map", "base_link", k * S // 10, pose(0.0, (k / 10, 0, 0))), static=False)

    def reader() -> None:
        try:
            for _ in range(400):
                lo, hi = b.time_range("map", "base_link") or (0, 0)
                t = (lo + hi) // 2
                T = b.lookup("map", "lidar", t)
                assert abs(T[0, 3] - (t / S + BASE_LIDAR[0, 3])) < 1e-9
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    threads = [
        threading.Thread(target=writer),
        threading.Thread(target=reader),
        threading.Thread(target=reader),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert b.time_range("map", "base_link") == (0, 399 * S // 10)
