"""Acceptance tests of the transform buffer + projection on real data (nuScenes, KITTI, SemanticKITTI).

nuScenes: the official devkit's ``map_pointcloud_to_image`` (min distance 1 m) puts 3053 / 3076 / 3369 /
4820 / 4089 / 3696 points of the fixture keyframe into the six cameras; our pipeline (TransformBuffer with
ego poses at each sensor's own stamp, ``lidar_to_camera`` with ego-motion compensation, ``project_to_image``)
must give the same counts. KITTI: pixels must match KITTI's own formula ``P2 R0_rect Tr_velo_to_cam X``.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from lidar_ssl_core.errors import CalibrationError
from lidar_ssl_core.geometry import calibration as calibration_module
from lidar_ssl_core.geometry.calibration import RigCalibration, lidar_to_camera
from lidar_ssl_core.geometry.projection import project_cloud, project_to_image
from lidar_ssl_core.geometry.tf_buffer import TransformBuffer
from lidar_ssl_core.geometry.transforms import Matrix4, apply, invert, transform_from_quat
from lidar_ssl_core.types import CameraIntrinsics, StampedTransform

DEVKIT_COUNTS = {
    "CAM_FRONT": 3053,
    "CAM_FRONT_RIGHT": 3076,
    "CAM_BACK_RIGHT": 3369,
    "CAM_BACK": 4820,
    "CAM_BACK_LEFT": 4089,
    "CAM_FRONT_LEFT": 3696,
}


# ---------------------------------------------------------------------------- nuScenes table helper
def _nus_transform(record: dict[str, Any]) -> Matrix4:
    """nuScenes stores quaternions as (w, x, y, z); translation in metres; maps child into parent."""
    w, x, y, z = record["rotation"]
    return transform_from_quat(record["translation"], [x, y, z, w])


@dataclass
class _NuScenesSample:
    """The one keyframe of the fixture, read from the v1.0-mini JSON tables (no devkit)."""

    root: Path
    channels: dict[str, dict[str, Any]]  # channel -> sample_data record
    calibrated: dict[str, dict[str, Any]]  # channel -> calibrated_sensor record
    ego: dict[str, dict[str, Any]]  # channel -> ego_pose record

    @classmethod
    def load(cls, root: Path) -> _NuScenesSample:
        def table(name: str) -> dict[str, dict[str, Any]]:
            rows = json.loads((root / "v1.0-mini" / f"{name}.json").read_text())
            return {r["token"]: r for r in rows}

        sample_data, calibrated, ego, sensor = (
            table(n) for n in ("sample_data", "calibrated_sensor", "ego_pose", "sensor")
        )
        channels: dict[str, dict[str, Any]] = {}
        cs_by_channel: dict[str, dict[str, Any]] = {}
        ego_by_channel: dict[str, dict[str, Any]] = {}
        for sd in sample_data.values():
            cs = calibrated[sd["calibrated_sensor_token"]]
            channel = sensor[cs["sensor_token"]]["channel"]
            channels[channel] = sd
            cs_by_channel[channel] = cs
            ego_by_channel[channel] = ego[sd["ego_pose_token"]]
        return cls(root, channels, cs_by_channel, ego_by_channel)

    def stamp_ns(self, channel: str) -> int:
        return int(self.channels[channel]["timestamp"]) * 1000  # nuScenes stamps are microseconds

    def lidar_xyz(self) -> npt.NDArray[np.float32]:
        raw = np.fromfile(self.root / self.channels["LIDAR_TOP"]["filename"], dtype=np.float32)
        return raw.reshape(-1, 5)[:, :3]

    def intrinsics(self, channel: str) -> CameraIntrinsics:
        sd = self.channels[channel]
        K = np.asarray(self.calibrated[channel]["camera_intrinsic"], dtype=np.float64)
        return CameraIntrinsics(K=K, width=int(sd["width"]), height=int(sd["height"]), frame_id=channel)

    def buffer(self, with_poses: bool = True) -> TransformBuffer:
        buf = TransformBuffer()
        for channel, cs in self.calibrated.items():
            buf.add(StampedTransform("base_link", channel, 0, _nus_transform(cs)), static=True)
            if with_poses:  # each sample_data has its own ego pose (world <- ego) at its own stamp
                pose = self.ego[channel]
                stamp = int(pose["timestamp"]) * 1000
                buf.add(StampedTransform("map", "base_link", stamp, _nus_transform(pose)), static=False)
        return buf


@pytest.fixture(scope="module")
def nus(nuscenes_root: Path) -> _NuScenesSample:
    return _NuScenesSample.load(nuscenes_root)


def _nus_counts(nus: _NuScenesSample, buf: TransformBuffer, compensate: bool = True) -> dict[str, int]:
    xyz = nus.lidar_xyz()
    out = {}
    for cam in DEVKIT_COUNTS:
        T = lidar_to_camera(
            buf,
            "LIDAR_TOP",
            nus.stamp_ns("LIDAR_TOP"),
            cam,
            nus.stamp_ns(cam),
            "base_link",
            "map",
            compensate,
        )
        out[cam] = len(project_cloud(xyz, T, nus.intrinsics(cam), min_depth=1.0))
    return out


def test_nuscenes_counts_equal_devkit(nus: _NuScenesSample) -> None:
    assert nus.lidar_xyz().shape == (34688, 3)
    counts = _nus_counts(nus, nus.buffer())
    for cam, ref in DEVKIT_COUNTS.items():
        assert abs(counts[cam] - ref) <= 0.005 * ref, (cam, counts[cam], ref)
    # Every kept point is at least 1e-4 px / m from the devkit's strict bounds, so the match is exact.
    assert counts == DEVKIT_COUNTS


def test_nuscenes_transform_is_the_devkit_chain(nus: _NuScenesSample) -> None:
    """camera <- ego(t_cam) <- world <- ego(t_lidar) <- lidar, composed by hand from the tables."""
    buf = nus.buffer()
    for cam in DEVKIT_COUNTS:
        expected = (
            invert(_nus_transform(nus.calibrated[cam]))
            @ invert(_nus_transform(nus.ego[cam]))
            @ _nus_transform(nus.ego["LIDAR_TOP"])
            @ _nus_transform(nus.calibrated["LIDAR_TOP"])
        )
        got = lidar_to_camera(
            buf, "LIDAR_TOP", nus.stamp_ns("LIDAR_TOP"), cam, nus.stamp_ns(cam), "base_link", "map"
        )
        np.testing.assert_allclose(got, expected, atol=1e-9)


def test_nuscenes_without_poses_falls_back_and_logs_once(
    nus: _NuScenesSample, caplog: pytest.LogCaptureFixture
) -> None:
    calibration_module._warned_no_poses.clear()
    with caplog.at_level(logging.INFO, logger="lidar_ssl_core.geometry.calibration"):
        static_counts = _nus_counts(nus, nus.buffer(with_poses=False))
    assert sum("without ego-motion compensation" in r.getMessage() for r in caplog.records) == 1
    # Same as asking a posed buffer not to compensate.
    assert static_counts == _nus_counts(nus, nus.buffer(), compensate=False)
    # The car moves ~0.4 m between the CAM_FRONT and LiDAR stamps: compensation changes the result.
    assert static_counts != DEVKIT_COUNTS
    assert all(abs(static_counts[c] - DEVKIT_COUNTS[c]) < 0.1 * DEVKIT_COUNTS[c] for c in DEVKIT_COUNTS)


def test_nuscenes_rig_calibration(nus: _NuScenesSample) -> None:
    buf = nus.buffer()
    intr = {cam: nus.intrinsics(cam) for cam in DEVKIT_COUNTS}
    rig = RigCalibration.build(buf, intr, "LIDAR_TOP", base_frame="base_link", world_frame="map")
    assert sorted(rig.cameras) == sorted(DEVKIT_COUNTS)
    assert rig.has_poses()
    T = rig.camera_from_lidar("CAM_BACK", nus.stamp_ns("LIDAR_TOP"), nus.stamp_ns("CAM_BACK"))
    assert len(project_cloud(nus.lidar_xyz(), T, rig.camera("CAM_BACK").intrinsics)) == 4820

    missing = dict(intr)
    del missing["CAM_BACK"]
    with pytest.raises(CalibrationError, match=r"camera CAM_BACK: missing intrinsics"):
        RigCalibration.build(buf, missing, "LIDAR_TOP", cameras=list(DEVKIT_COUNTS))
    lonely = TransformBuffer()
    lonely.add(StampedTransform("base_link", "LIDAR_TOP", 0, np.eye(4)), static=True)
    with pytest.raises(CalibrationError, match=r"camera CAM_FRONT: missing extrinsic.*CAM_FRONT"):
        RigCalibration.build(lonely, {"CAM_FRONT": intr["CAM_FRONT"]}, "LIDAR_TOP")


# ---------------------------------------------------------------------------- KITTI
def _read_kitti_calib(path: Path) -> dict[str, npt.NDArray[np.float64]]:
    out = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        out[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
    return out


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG IHDR chunk, without an image library."""
    with path.open("rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _homogeneous(T3x4: npt.NDArray[np.float64]) -> Matrix4:
    T = np.eye(4)
    T[:3, :] = T3x4.reshape(3, 4)
    return T


def _kitti_reference(
    xyz: npt.NDArray[np.float64], P2: npt.NDArray[np.float64], R0: Matrix4, Tr: Matrix4, W: int, H: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """KITTI devkit formula x = P2 * R0_rect * Tr_velo_to_cam * [X; 1], then the nuScenes in-image test."""
    X = np.hstack([xyz, np.ones((xyz.shape[0], 1))]).T  # (4, N)
    rect = R0 @ Tr @ X
    x = P2 @ rect
    u, v = x[0] / x[2], x[1] / x[2]
    keep = (rect[2] > 1.0) & (u > 1) & (u < W - 1) & (v > 1) & (v < H - 1)
    idx = np.nonzero(keep)[0]
    uv = np.stack([u[idx], v[idx]], axis=1)
    return idx, uv, np.round(uv[:, ::-1]).astype(np.int64)


def _kitti_case(
    calib: dict[str, npt.NDArray[np.float64]], xyz: npt.NDArray[np.float64], tr_key: str, W: int, H: int
) -> tuple[int, int]:
    P2 = calib["P2"].reshape(3, 4)
    R0 = np.eye(4)
    if "R0_rect" in calib:
        R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    Tr = _homogeneous(calib[tr_key])
    ref_idx, ref_uv, ref_px = _kitti_reference(xyz, P2, R0, Tr, W, H)

    intr = CameraIntrinsics(K=P2[:, :3].copy(), width=W, height=H, frame_id="image_2", P=P2)
    buf = TransformBuffer()
    # KITTI gives camera <- velodyne; in tf terms the camera is the parent of the velodyne here.
    buf.add(StampedTransform("image_2", "velodyne", 0, R0 @ Tr), static=True)
    T = buf.lookup("image_2", "velodyne", 123)
    proj = project_cloud(xyz, T, intr, min_depth=1.0)
    np.testing.assert_array_equal(proj.point_index, ref_idx)
    np.testing.assert_array_equal(proj.pixel, ref_px)
    np.testing.assert_allclose(proj.uv, ref_uv, atol=1e-9)
    np.testing.assert_array_equal(T, R0 @ Tr)
    # The inverse direction goes through the same edge (rigid inverse; KITTI's 7-digit rotations are
    # orthonormal to ~1e-7 only).
    np.testing.assert_allclose(buf.lookup("velodyne", "image_2", 0) @ T, np.eye(4), atol=1e-6)
    return len(proj), len(ref_idx)


def test_kitti_object_pixels_match_kitti_formula(kitti_object_root: Path) -> None:
    train = kitti_object_root / "training"
    calib = _read_kitti_calib(train / "calib" / "000000.txt")
    xyz = np.fromfile(train / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)[:, :3]
    W, H = _png_size(train / "image_2" / "000000.png")
    assert (W, H) == (1224, 370)
    ours, ref = _kitti_case(calib, xyz.astype(np.float64), "Tr_velo_to_cam", W, H)
    assert ours == ref
    assert 15_000 < ours < 25_000  # the front ~90 degrees of a 64-beam scan


def test_semantickitti_projection_matches_kitti_formula(semantickitti_root: Path) -> None:
    seq = semantickitti_root / "sequences" / "00"
    calib = _read_kitti_calib(seq / "calib.txt")
    xyz = np.fromfile(seq / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)[:, :3]
    assert xyz.shape[0] == 124_668
    ours, ref = _kitti_case(calib, xyz.astype(np.float64), "Tr", 1241, 376)
    assert ours == ref
    assert ours > 10_000


def test_kitti_min_depth_uses_camera_z(kitti_object_root: Path) -> None:
    """Points just in front of / behind the min depth plane are split on camera z, not on P's w."""
    calib = _read_kitti_calib(kitti_object_root / "training" / "calib" / "000000.txt")
    P2 = calib["P2"].reshape(3, 4)
    intr = CameraIntrinsics(K=P2[:, :3].copy(), width=1224, height=370, P=P2)
    pts = np.array([[0.0, 0.0, 1.0 - 1e-6], [0.0, 0.0, 1.0 + 1e-6], [0.0, 0.0, 5.0]])
    proj = project_to_image(pts, intr, min_depth=1.0)
    assert proj.point_index.tolist() == [1, 2]
    w = pts[2, 2] + P2[2, 3]
    np.testing.assert_allclose(proj.uv[1], [(P2[0, 2] * 5.0 + P2[0, 3]) / w, (P2[1, 2] * 5.0 + P2[1, 3]) / w])
    np.testing.assert_allclose(apply(np.eye(4), pts)[proj.point_index, 2], proj.depth)
