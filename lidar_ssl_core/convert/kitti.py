"""KITTI conventions shared by the three KITTI layouts (raw drives, object, SemanticKITTI).

KITTI projects a velodyne point into the rectified image of camera i as ``x = P_rect_i · R0_rect ·
Tr_velo_to_cam · X`` (R0_rect is identity for SemanticKITTI, whose ``Tr`` is already rectified).
In the bag profile a camera is a frame plus intrinsics, so :func:`rectified_camera` splits that product:

* ``K = P_rect_i[:, :3]`` (CameraInfo.k), zero distortion (the images are rectified);
* the camera frame is camera i's own optical centre: P_rect_i's baseline column is folded into the
  extrinsic, ``T(cam_i <- velo) = [I | K⁻¹ P_rect_i[:, 3]] · R0_rect · Tr_velo_to_cam``;
* tf stores rotations as unit quaternions, while KITTI's 7-digit matrices are orthonormal to ~1e-7 only.
  The extrinsic written is the quaternion-exact one, and CameraInfo.p absorbs the remainder,
  ``P = P_rect_i · R0_rect · Tr_velo_to_cam · T⁻¹`` (= ``[K | 0]`` up to ~1e-7), so that a reader
  projecting with P and the transform it reads back gets KITTI's pixels to float64 rounding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.bag_formats import CLASS_MAP_KEY
from lidar_ssl_core.convert.common import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    LIDAR_FRAME,
    EventList,
    Topics,
    add_profile_topics,
    image_message,
    info_message,
    lidar_message,
    orthonormal,
    read_bytes,
    read_float_records,
    read_labels,
    tf_message,
)
from lidar_ssl_core.errors import CalibrationError, DatasetError
from lidar_ssl_core.geometry.transforms import Matrix4, invert
from lidar_ssl_core.types import CameraIntrinsics, StampedTransform

F64 = npt.NDArray[np.float64]

#: KITTI colour cameras: dataset folder index -> camera name in the bag
COLOR_CAMERAS = {2: "image_2", 3: "image_3"}


def read_calib_file(path: Path) -> dict[str, F64]:
    """``key: v1 v2 ...`` lines -> arrays; non-numeric values (``calib_time: ...``) are skipped."""
    text = read_bytes(path, "calibration").decode("utf-8", errors="replace")
    out: dict[str, F64] = {}
    for line in text.splitlines():
        key, sep, values = line.partition(":")
        if not sep or not key.strip():
            continue
        try:
            out[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError:
            continue
    if not out:
        raise CalibrationError(f"calibration file {path} has no 'key: numbers' line")
    return out


def calib_matrix(calib: dict[str, F64], key: str, shape: tuple[int, int], path: Path) -> F64:
    """One matrix of a calibration file, checked for its size."""
    if key not in calib:
        raise CalibrationError(f"calibration file {path} has no '{key}' (keys: {', '.join(sorted(calib))})")
    values = calib[key]
    if values.size != shape[0] * shape[1]:
        raise CalibrationError(
            f"calibration file {path}: '{key}' has {values.size} numbers, expected {shape[0] * shape[1]}"
        )
    if not np.all(np.isfinite(values)):
        raise CalibrationError(f"calibration file {path}: '{key}' has non-finite values")
    return values.reshape(shape)


def homogeneous(T3x4: F64) -> Matrix4:
    T = np.eye(4)
    T[:3, :] = T3x4
    return T


@dataclass(frozen=True)
class RectifiedCamera:
    """One KITTI camera in the bag profile: T(camera <- velodyne) and its intrinsics."""

    name: str
    T_cam_velo: Matrix4
    intrinsics: CameraIntrinsics


def rectified_camera(
    name: str, P_rect: F64, R0_rect: F64 | None, Tr_velo_to_cam: Matrix4, width: int, height: int
) -> RectifiedCamera:
    """See the module docstring: K from P_rect, baseline folded into the extrinsic, exact P."""
    K = P_rect[:, :3].copy()
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1.0:
        raise CalibrationError(
            f"camera {name}: P_rect {P_rect.tolist()} is not a rectified pinhole projection"
        )
    R0 = np.eye(4)
    if R0_rect is not None:
        R0[:3, :3] = R0_rect
    rect_from_velo = R0 @ Tr_velo_to_cam
    baseline = np.eye(4)
    baseline[:3, 3] = np.linalg.solve(K, P_rect[:, 3])
    T = orthonormal(baseline @ rect_from_velo)
    M = P_rect @ rect_from_velo  # KITTI's velodyne -> pixel matrix (3x4)
    P = M @ invert(T)
    intrinsics = CameraIntrinsics(
        K=K, width=int(width), height=int(height), frame_id=name, D=np.zeros(5), P=P
    )
    return RectifiedCamera(name, T, intrinsics)


def png_size(data: bytes, path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DatasetError(f"image file {path} is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def png_file_size(path: Path) -> tuple[int, int]:
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except OSError as err:
        raise DatasetError(f"image file {path} cannot be read: {err}") from err
    return png_size(head, path)


def parse_timestamp_ns(text: str) -> int:
    """``2011-09-26 13:02:25.964389445`` -> ns since the epoch, read as UTC, nanoseconds kept exactly."""
    day_time, _, frac = text.strip().partition(".")
    base = datetime.strptime(day_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    digits = (frac + "000000000")[:9] if frac else "0"
    if not digits.isdigit():
        raise ValueError(f"bad fraction in {text!r}")
    return int(base.timestamp()) * 1_000_000_000 + int(digits)


def read_timestamps(path: Path) -> list[int]:
    """A KITTI raw ``timestamps.txt``: one stamp per line (blank lines ignored)."""
    lines = [
        ln
        for ln in read_bytes(path, "timestamps").decode("utf-8", errors="replace").splitlines()
        if ln.strip()
    ]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(parse_timestamp_ns(line))
        except ValueError as err:
            raise DatasetError(
                f"timestamps file {path} line {i + 1}: {line!r} is not a timestamp ({err})"
            ) from err
    return out


def read_matrix_rows(path: Path, width: int, what: str) -> F64:
    """A text file of rows of ``width`` numbers (poses.txt, times.txt)."""
    text = read_bytes(path, what).decode("utf-8", errors="replace")
    rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    try:
        arr = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError as err:
        raise DatasetError(f"{what} file {path} has a non-numeric value: {err}") from err
    if arr.size and (arr.ndim != 2 or arr.shape[1] != width):
        bad = next(i for i, row in enumerate(rows) if len(row) != width)
        raise DatasetError(
            f"{what} file {path} line {bad + 1} has {len(rows[bad])} numbers, expected {width}"
        )
    return arr.reshape(-1, width)


def velodyne_columns(points: npt.NDArray[np.float32]) -> dict[str, np.ndarray]:
    """KITTI (N, 4) x y z reflectance -> profile columns (no ring: KITTI gives none)."""
    return {"x": points[:, 0], "y": points[:, 1], "z": points[:, 2], "intensity": points[:, 3]}


def frame_index(path: Path) -> int:
    """``000123.bin`` / ``0000000123.png`` -> 123."""
    try:
        return int(path.stem)
    except ValueError:
        raise DatasetError(f"file {path} is not named by a frame number") from None


def numbered_files(folder: Path, suffix: str) -> dict[int, Path]:
    """frame number -> file, for every ``<number><suffix>`` in ``folder``."""
    if not folder.is_dir():
        return {}
    return {frame_index(p): p for p in folder.iterdir() if p.name.endswith(suffix) and p.stem.isdigit()}


# ------------------------------------------------------------------------------- one KITTI bag
@dataclass(frozen=True)
class LidarItem:
    stamp_ns: int
    path: Path
    label_path: Path | None = None


@dataclass(frozen=True)
class ImageItem:
    stamp_ns: int
    camera: str
    path: Path


@dataclass(frozen=True)
class KittiUnit:
    """One KITTI bag: scans (+ SemanticKITTI labels), PNG images, fixed calibration, optional poses.

    ``base_link`` is the velodyne frame (``base_link -> lidar_top`` is the identity) in every KITTI layout:
    the velodyne is the one sensor all three layouts calibrate against. ``poses`` are T(map <- base_link).
    """

    name: str
    scans: tuple[LidarItem, ...]
    images: tuple[ImageItem, ...]
    cameras: tuple[RectifiedCamera, ...]
    poses: tuple[tuple[int, Matrix4], ...] = ()
    info_stamps: tuple[int, ...] = ()  # CameraInfo-only stamps for cameras without images

    def input_files(self) -> list[Path]:
        files = [s.path for s in self.scans] + [s.label_path for s in self.scans if s.label_path]
        return files + [i.path for i in self.images]

    @property
    def n_frames(self) -> int:
        return len(self.scans)

    def write(self, writer: BagWriter, profile: Topics, advance: Callable[[int], None]) -> None:
        cameras = {c.name: c for c in self.cameras}
        with_images = {i.camera for i in self.images}
        add_profile_topics(writer, profile, [], poses=bool(self.poses))
        if any(s.label_path for s in self.scans):  # raw SemanticKITTI ids: the semantickitti map
            writer.set_custom_data(CLASS_MAP_KEY, "semantickitti")
        for cam in cameras:
            if cam in with_images:
                writer.add_topic(profile.image_topic(cam), COMPRESSED_IMAGE)
            writer.add_topic(profile.info_topic(cam), CAMERA_INFO)
        events = EventList()
        for i, scan in enumerate(self.scans):
            events.add(scan.stamp_ns, "lidar", i)
        for i, image in enumerate(self.images):
            events.add(image.stamp_ns, "image", i)
        for i, (stamp, _) in enumerate(self.poses):
            events.add(stamp, "tf", i)
        for stamp in self.info_stamps:
            for cam in cameras:
                if cam not in with_images:
                    events.add(stamp, "info", cam)
        first = events.first_stamp
        static = [StampedTransform(profile.base_frame, LIDAR_FRAME, first, np.eye(4))]
        static += [
            StampedTransform(profile.base_frame, c.name, first, invert(c.T_cam_velo)) for c in self.cameras
        ]
        writer.write(profile.tf_static_topic, first, tf_message(writer, static))
        for ev in events.sorted():
            if ev.kind == "lidar":
                scan = self.scans[ev.key]
                columns, n, packed = self._scan_columns(scan)
                cloud = lidar_message(writer, columns, ev.stamp_ns, packed=packed)
                writer.write(profile.lidar_topic, ev.stamp_ns, cloud)
                advance(n)
            elif ev.kind == "image":
                item = self.images[ev.key]
                data = read_bytes(item.path, "image")
                intr = cameras[item.camera].intrinsics
                msg = image_message(
                    writer, data, ev.stamp_ns, item.camera, item.path, (intr.width, intr.height)
                )
                writer.write(
                    profile.info_topic(item.camera), ev.stamp_ns, info_message(writer, intr, ev.stamp_ns)
                )
                writer.write(profile.image_topic(item.camera), ev.stamp_ns, msg)
                advance(len(data))
            elif ev.kind == "info":
                intr = cameras[ev.key].intrinsics
                writer.write(profile.info_topic(ev.key), ev.stamp_ns, info_message(writer, intr, ev.stamp_ns))
            else:
                stamp, T = self.poses[ev.key]
                pose = StampedTransform(profile.world_frame, profile.base_frame, stamp, T)
                writer.write(profile.tf_topic, stamp, tf_message(writer, [pose]))

    @staticmethod
    def _scan_columns(scan: LidarItem) -> tuple[dict[str, np.ndarray], int, np.ndarray | None]:
        """Profile columns of a scan, bytes read, and the scan block when it can go in unchanged."""
        points, n = read_float_records(scan.path, 4, "velodyne")
        columns = velodyne_columns(points)
        if scan.label_path is None:
            return columns, n, points
        raw, n_label = read_labels(scan.label_path, "<u4", points.shape[0], "SemanticKITTI label")
        columns["label"] = (raw & 0xFFFF).astype(np.uint16)  # semantic id (raw SemanticKITTI id)
        columns["instance"] = (raw >> 16).astype(np.uint16)  # instance id
        return columns, n + n_label, None
