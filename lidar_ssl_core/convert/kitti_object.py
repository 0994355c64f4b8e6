"""KITTI 3D object benchmark (``<root>/training`` or ``testing``) -> bags in the profile.

The object benchmark is a set of unrelated snapshots from many drives, each frame with its own
``calib/<frame>.txt`` and image size. A bag holds one calibration (one ``/tf_static``, intrinsics from its
first CameraInfo), so frames are grouped by identical calibration and image size: one bag per group,
named ``<split>_calib<k>`` (k counts groups in order of first appearance), frames in index order inside.
There are no timestamps: frame ``i`` is stamped ``start + i * 0.1 s`` (a synthetic 10 Hz clock), so the
stamp gives back the frame index in every group. No poses (the frames are not a sequence), so no ``/tf``.
``label_2`` boxes are not converted (the profile has no box topic).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

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
    homogeneous,
    numbered_files,
    png_file_size,
    read_calib_file,
    rectified_camera,
)
from lidar_ssl_core.errors import DatasetError

log = logging.getLogger(__name__)

FRAME_PERIOD_NS = 100_000_000  # synthetic 10 Hz clock
DEFAULT_START_NS = 1_000_000_000  # t = 1 s for frame 0 (no zero stamps: ROS reads 0 as "unset")


def plan_kitti_object(
    root: Path,
    *,
    split: str = "training",
    frames: list[int] | None = None,
    start_ns: int = DEFAULT_START_NS,
) -> tuple[list[KittiUnit], list[tuple[str, str]]]:
    """Units (one per calibration group) and (frame, reason) of the frames left out."""
    base = Path(root) / split
    velodyne = numbered_files(base / "velodyne", ".bin")
    if not velodyne:
        raise DatasetError(
            f"{base / 'velodyne'} has no <frame>.bin scan (is --root the KITTI object folder?)"
        )
    images = {i: numbered_files(base / f"image_{i}", ".png") for i in COLOR_CAMERAS}
    wanted = sorted(velodyne) if frames is None else sorted(set(frames))
    groups: dict[bytes, list[tuple[int, LidarItem, list[ImageItem]]]] = {}
    cams_of_group: dict[bytes, tuple] = {}
    problems: list[tuple[str, str]] = []
    for idx in wanted:
        try:
            if idx not in velodyne:
                raise DatasetError(f"velodyne file {base / 'velodyne' / f'{idx:06d}.bin'} is missing")
            key, cameras, items = _frame(base, idx, images, start_ns)
        except Exception as err:  # one odd frame must not stop the others (as run_unit does per bag)
            problems.append(plan_failure("kitti-object frame", f"{split}_frame_{idx:06d}", err))
            continue
        stamp = start_ns + idx * FRAME_PERIOD_NS
        groups.setdefault(key, []).append((idx, LidarItem(stamp, velodyne[idx]), items))
        cams_of_group.setdefault(key, cameras)
    units = []
    for k, (key, members) in enumerate(groups.items()):
        name = f"{split}_calib{k}"
        try:  # the synthetic clock increases with the (unique, sorted) frame index: a guard, cheap
            check_consistent_stamps([m[1].stamp_ns for m in members], f"{name}: synthetic frame stamps")
        except DatasetError as err:
            problems.append(plan_failure("kitti-object group", name, err))
            continue
        units.append(
            KittiUnit(
                name=name,
                scans=tuple(m[1] for m in members),
                images=tuple(i for m in members for i in m[2]),
                cameras=cams_of_group[key],
            )
        )
    return units, problems


def _frame(
    base: Path, idx: int, images: dict[int, dict[int, Path]], start_ns: int
) -> tuple[bytes, tuple, list[ImageItem]]:
    calib_path = base / "calib" / f"{idx:06d}.txt"
    calib = read_calib_file(calib_path)
    R0 = calib_matrix(calib, "R0_rect", (3, 3), calib_path)
    Tr = homogeneous(calib_matrix(calib, "Tr_velo_to_cam", (3, 4), calib_path))
    stamp = start_ns + idx * FRAME_PERIOD_NS
    cameras = []
    items = []
    key_parts = [R0.tobytes(), Tr.tobytes()]
    for i, name in COLOR_CAMERAS.items():
        path = images[i].get(idx)
        if path is None:
            continue
        P = calib_matrix(calib, f"P{i}", (3, 4), calib_path)
        width, height = png_file_size(path)
        cameras.append(rectified_camera(name, P, R0, Tr, width, height))
        items.append(ImageItem(stamp, name, path))
        key_parts += [name.encode(), P.tobytes(), np.array([width, height]).tobytes()]
    if not cameras:
        raise DatasetError(f"frame {idx:06d} has no image_2/image_3 png under {base}")
    return b"|".join(key_parts), tuple(cameras), items


def convert_kitti_object(
    root: Path,
    options: ConvertOptions,
    *,
    split: str = "training",
    frames: list[int] | None = None,
    start_ns: int = DEFAULT_START_NS,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
) -> ConvertSummary:
    """One bag per calibration group at ``options.out_dir/<split>_calib<k>``."""
    units, problems = plan_kitti_object(root, split=split, frames=frames, start_ns=start_ns)
    return execute(units, options, plan_failures=problems, progress=progress, dry=dry_run)
