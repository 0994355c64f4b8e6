"""KITTI raw drive (``<root>/<date>/<date>_drive_<NNNN>_sync``) -> one bag per drive.

Reads the synchronised-and-rectified layout: ``velodyne_points/data/*.bin``, the colour cameras
``image_02`` / ``image_03`` (``data/*.png``, rectified), ``oxts/data/*.txt`` and each sensor's own
``timestamps.txt`` (local time of the recording, stored as if UTC; nanoseconds kept). Calibration from
``<date>/calib_cam_to_cam.txt`` (``P_rect_0i``, ``R_rect_00``, ``S_rect_0i``), ``calib_velo_to_cam.txt``
and ``calib_imu_to_velo.txt``; a velodyne point lands in image i at ``P_rect_0i · R_rect_00 ·
Tr_velo_to_cam · X`` (see :mod:`lidar_ssl_core.convert.kitti`).

Poses: each oxts sample (lat, lon, alt, roll, pitch, yaw) becomes an IMU pose by the KITTI devkit's
Mercator convention: ``s = cos(lat_0)``, ``x = s · R_e · lon · π/180``, ``y = s · R_e · ln tan((90 + lat) ·
π/360)``, ``z = alt``, ``R = Rz(yaw) Ry(pitch) Rx(roll)``, with R_e = 6378137 m and lat_0 the drive's first
latitude. ``map`` is the IMU frame of the first oxts sample; base_link is the velodyne, so ``T(map <- base)
= T(map <- imu) · T(imu <- velo)``. Poses are written at every oxts stamp and, interpolated, at every
velodyne and camera stamp (held for up to 0.1 s beyond the first/last oxts sample).
The unsynchronised ``_extract`` layout (text scans) is not supported.
"""

from __future__ import annotations

import bisect
import logging
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.convert.common import (
    ConvertOptions,
    ConvertSummary,
    ProgressCallback,
    check_consistent_stamps,
    execute,
    plan_failure,
)
from lidar_ssl_core.convert.kitti import (
    COLOR_CAMERAS,
    ImageItem,
    KittiUnit,
    LidarItem,
    calib_matrix,
    numbered_files,
    read_calib_file,
    read_matrix_rows,
    read_timestamps,
    rectified_camera,
)
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.geometry.transforms import Matrix4, interpolate, invert, make_transform

log = logging.getLogger(__name__)

EARTH_RADIUS_M = 6378137.0
POSE_HOLD_NS = 100_000_000


def drive_name(date: str, drive: str) -> str:
    return f"{date}_drive_{int(drive):04d}_sync" if drive.isdigit() else f"{date}_drive_{drive}_sync"


def oxts_poses(oxts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, >=6) oxts rows (lat, lon, alt, roll, pitch, yaw, ...) -> (N, 4, 4) T(world <- imu), Mercator."""
    lat, lon, alt = oxts[:, 0], oxts[:, 1], oxts[:, 2]
    roll, pitch, yaw = oxts[:, 3], oxts[:, 4], oxts[:, 5]
    scale = math.cos(math.radians(float(lat[0])))
    x = scale * EARTH_RADIUS_M * np.radians(lon)
    y = scale * EARTH_RADIUS_M * np.log(np.tan(np.radians(90.0 + lat) / 2.0))
    cr, sr, cp, sp, cy, sy = (
        np.cos(roll),
        np.sin(roll),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(yaw),
        np.sin(yaw),
    )
    n = oxts.shape[0]
    T = np.zeros((n, 4, 4))
    # R = Rz(yaw) @ Ry(pitch) @ Rx(roll), written out
    T[:, 0, 0] = cy * cp
    T[:, 0, 1] = cy * sp * sr - sy * cr
    T[:, 0, 2] = cy * sp * cr + sy * sr
    T[:, 1, 0] = sy * cp
    T[:, 1, 1] = sy * sp * sr + cy * cr
    T[:, 1, 2] = sy * sp * cr - cy * sr
    T[:, 2, 0] = -sp
    T[:, 2, 1] = cp * sr
    T[:, 2, 2] = cp * cr
    T[:, 0, 3], T[:, 1, 3], T[:, 2, 3] = x, y, alt
    T[:, 3, 3] = 1.0
    return T


def _rt(calib: dict[str, npt.NDArray[np.float64]], path: Path) -> Matrix4:
    return make_transform(
        calib_matrix(calib, "R", (3, 3), path), calib_matrix(calib, "T", (3, 1), path)[:, 0]
    )


def _sensor(folder: Path, suffix: str, *, strict: bool = True) -> tuple[dict[int, Path], list[int]]:
    """Files by frame number and the sensor's stamps; every file needs a line in timestamps.txt.

    ``strict``: the stamps of the files, in frame order, must strictly increase (oxts stamps may repeat).
    """
    files = numbered_files(folder / "data", suffix)
    if not files:
        return {}, []
    stamps = read_timestamps(folder / "timestamps.txt")
    beyond = [k for k in files if k >= len(stamps)]
    if beyond:
        raise DatasetError(
            f"timestamps file {folder / 'timestamps.txt'} has {len(stamps)} lines but {folder / 'data'} has "
            f"frame {max(beyond)}"
        )
    if strict:
        check_consistent_stamps(
            [stamps[k] for k in sorted(files)], f"timestamps file {folder / 'timestamps.txt'}"
        )
    return files, stamps


def plan_drives(root: Path, date: str, drives: list[str]) -> tuple[list[KittiUnit], list[tuple[str, str]]]:
    units, problems = [], []
    for drive in drives:
        try:
            units.append(plan_drive(Path(root), date, drive))
        except Exception as err:  # one odd drive must not stop the others (as run_unit does per bag)
            problems.append(plan_failure("drive", drive_name(date, drive), err))
    return units, problems


def plan_drive(root: Path, date: str, drive: str) -> KittiUnit:
    name = drive_name(date, drive)
    base = root / date / name
    if not base.is_dir():
        raise DatasetError(
            f"drive folder {base} does not exist (expected <root>/<date>/<date>_drive_NNNN_sync)"
        )
    cam_path = root / date / "calib_cam_to_cam.txt"
    velo_path = root / date / "calib_velo_to_cam.txt"
    cam_calib = read_calib_file(cam_path)
    Tr = _rt(read_calib_file(velo_path), velo_path)
    R0 = calib_matrix(cam_calib, "R_rect_00", (3, 3), cam_path)

    velo_files, velo_stamps = _sensor(base / "velodyne_points", ".bin")
    if not velo_files:
        raise DatasetError(f"{base / 'velodyne_points' / 'data'} has no <frame>.bin scan")
    scans = tuple(LidarItem(velo_stamps[k], velo_files[k]) for k in sorted(velo_files))
    cameras, images = [], []
    for i, cam in COLOR_CAMERAS.items():
        files, stamps = _sensor(base / f"image_{i:02d}", ".png")
        if not files:
            continue
        P = calib_matrix(cam_calib, f"P_rect_{i:02d}", (3, 4), cam_path)
        width, height = (int(v) for v in calib_matrix(cam_calib, f"S_rect_{i:02d}", (1, 2), cam_path)[0])
        cameras.append(rectified_camera(cam, P, R0, Tr, width, height))
        images += [ImageItem(stamps[k], cam, files[k]) for k in sorted(files)]
    sensor_stamps = [s.stamp_ns for s in scans] + [i.stamp_ns for i in images]
    poses = _poses(root, date, base, sensor_stamps)
    return KittiUnit(name=name, scans=scans, images=tuple(images), cameras=tuple(cameras), poses=poses)


def _poses(root: Path, date: str, base: Path, sensor_stamps: list[int]) -> tuple[tuple[int, Matrix4], ...]:
    files, stamps = _sensor(base / "oxts", ".txt", strict=False)
    if not files:
        log.warning("%s: no oxts data, the bag has no ego poses", base)
        return ()
    imu_path = root / date / "calib_imu_to_velo.txt"
    T_imu_velo = invert(_rt(read_calib_file(imu_path), imu_path))
    order = sorted(files)
    rows = np.stack([_oxts_row(files[k]) for k in order])
    world_imu = oxts_poses(rows)
    map_base = np.linalg.inv(world_imu[0]) @ world_imu @ T_imu_velo
    by_stamp: dict[int, Matrix4] = {}
    for k, T in zip(order, map_base, strict=True):
        by_stamp.setdefault(stamps[k], T)  # KITTI oxts stamps are sometimes repeated: keep the first
    known = sorted(by_stamp)
    mats = [by_stamp[s] for s in known]
    out = dict(by_stamp)
    missing = 0
    for stamp in set(sensor_stamps) - set(by_stamp):
        j = bisect.bisect_left(known, stamp)
        if 0 < j < len(known):
            alpha = (stamp - known[j - 1]) / (known[j] - known[j - 1])
            out[stamp] = interpolate(mats[j - 1], mats[j], alpha)
        elif j == 0 and known[0] - stamp <= POSE_HOLD_NS:
            out[stamp] = mats[0]
        elif j == len(known) and stamp - known[-1] <= POSE_HOLD_NS:
            out[stamp] = mats[-1]
        else:
            missing += 1
    if missing:
        log.warning("%s: %d sensor stamps are beyond the oxts data; they have no ego pose", base, missing)
    return tuple((s, out[s]) for s in sorted(out))


def _oxts_row(path: Path) -> npt.NDArray[np.float64]:
    """The one sample of an oxts file (30 numbers; an empty file is a DatasetError naming it)."""
    rows = read_matrix_rows(path, 30, "oxts")
    if rows.shape[0] == 0:
        raise DatasetError(f"oxts file {path} is empty; expected one line of 30 numbers")
    return np.asarray(rows[0], dtype=np.float64)


def convert_kitti_raw(
    root: Path,
    date: str,
    drives: list[str],
    options: ConvertOptions,
    *,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
) -> ConvertSummary:
    """One bag per drive at ``options.out_dir/<date>_drive_<NNNN>_sync``."""
    units, problems = plan_drives(root, date, drives)
    return execute(units, options, plan_failures=problems, progress=progress, dry=dry_run)
